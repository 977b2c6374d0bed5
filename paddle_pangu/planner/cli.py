"""`pangu plan`: size parallel layouts for a cluster (memory and step-time estimates)."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="model preset: 350m, 2.6b, 13b, 200b ...")
    p.add_argument("--devices", type=int, required=True, help="accelerators in the job")
    p.add_argument("--memory-gb", type=float, default=32.0, help="memory per device (Ascend 910: 32)")
    p.add_argument("--peak-tflops", type=float, default=256.0, help="fp16 peak per device (Ascend 910: ~256)")
    p.add_argument("--devices-per-node", type=int, default=8)
    p.add_argument("--utilization", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    p.add_argument("--global-batch", type=int, required=True, help="samples per optimizer step")
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..config import get_preset
    from .estimate import Hardware
    from .search import plan

    config = get_preset(args.preset)
    hw = Hardware(args.devices, args.memory_gb, args.peak_tflops, args.devices_per_node, args.utilization)
    best, considered = plan(config, hw, args.global_batch, args.seq_length, args.top)
    if args.json:
        print(json.dumps({"considered": considered, "plans": [e.to_dict() for e in best]}, indent=2))
        return 0 if best else 1
    print(f"{args.preset}: {config.num_parameters() / 1e9:.2f}B params on {args.devices} x {args.memory_gb:g} GB; "
          f"{considered} valid layouts, {len(best)} shown that fit")
    print(f"{'dp':>4}{'mp':>4}{'pp':>4}{'shard':>7}{'stg':>4}{'mb':>4}{'acc':>5}{'rc':>4}{'mem GB':>9}{'step s':>9}{'tok/s':>11}")
    for e in best:
        l = e.layout
        print(f"{l['dp_degree']:>4}{l['mp_degree']:>4}{l['pp_degree']:>4}{l['sharding_degree']:>7}{l['sharding_stage']:>4}"
              f"{l['micro_batch_size']:>4}{l['accumulate_steps']:>5}{l['recompute_interval']:>4}{e.memory_gb:>9.1f}"
              f"{e.step_seconds:>9.2f}{e.tokens_per_second:>11.0f}")
    if not best:
        print("no layout fits: add devices, memory, or lower the micro-batch")
        return 1
    return 0
