"""`pangu plan`: size parallel layouts for a cluster (memory and step-time estimates, reasons, a run config).

    pangu plan --preset 200b --devices 2048 --device-preset ascend910 --global-batch 1536
    pangu plan ... --explain                      # every layout considered and why each was rejected
    pangu plan ... --write-config plan.yaml       # the best layout as a run YAML for `pangu train`
"""
from __future__ import annotations

import argparse
import json

from ..planner.hardware import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="model preset: 350m, 2.6b, 13b, 200b ...")
    p.add_argument("--devices", type=int, required=True, help="accelerators (processes) in the job")
    p.add_argument("--device-preset", choices=list(PRESETS), default="ascend910",
                   help="device type (memory, peak TFLOPS, bandwidths, devices per node); default ascend910")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default=None,
                   help="training dtype (default: float16 where the device has it, else bfloat16, else float32)")
    p.add_argument("--memory-gb", type=float, default=None, help="override: memory per device")
    p.add_argument("--peak-tflops", type=float, default=None, help="override: peak TFLOPS per device at --dtype")
    p.add_argument("--intra-node-gbs", type=float, default=None, help="override: GB/s between devices of a node")
    p.add_argument("--inter-node-gbs", type=float, default=None, help="override: GB/s per device between nodes")
    p.add_argument("--devices-per-node", type=int, default=None, help="override: devices per node")
    p.add_argument("--utilization", type=float, default=None, help="override: assumed model-FLOPs utilisation")
    p.add_argument("--reserve-gb", type=float, default=None, help="override: workspace / fragmentation reserve")
    p.add_argument("--global-batch", type=int, required=True, help="samples per optimizer step")
    p.add_argument("--seq-length", type=int, default=None)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--explain", action="store_true", help="list every layout considered with its rejection reason")
    p.add_argument("--write-config", metavar="FILE.yaml", default=None,
                   help="write the best layout as a run config `pangu train` accepts (validated on write)")
    p.add_argument("--base-config", metavar="RUN.yaml", default=None,
                   help="with --write-config: keep this run YAML's data/optim/train sections (default: synthetic data)")


def hardware_from_args(args):
    """Hardware for the chosen device preset with the command-line overrides applied."""
    import dataclasses

    from ..errors import UsageError
    from ..planner.estimate import Hardware
    from ..planner.hardware import get_device_preset, override

    if args.devices < 1:
        raise UsageError(f"--devices {args.devices}: expected >= 1")
    preset = override(get_device_preset(args.device_preset), memory_gb=args.memory_gb,
                      intra_node_gbs=args.intra_node_gbs, inter_node_gbs=args.inter_node_gbs,
                      devices_per_node=args.devices_per_node, utilization=args.utilization,
                      reserve_gb=args.reserve_gb)
    hw = Hardware.from_preset(preset, args.devices, args.dtype)
    return dataclasses.replace(hw, peak_tflops=args.peak_tflops) if args.peak_tflops else hw


def _row(layout: dict) -> str:
    return (f"{layout['dp_degree']:>4}{layout['mp_degree']:>4}{layout['pp_degree']:>4}{layout['sharding_degree']:>7}"
            f"{layout['sharding_stage']:>4}{layout['micro_batch_size']:>4}{layout['recompute_interval']:>4}")


HEADER = f"{'dp':>4}{'mp':>4}{'pp':>4}{'shard':>7}{'stg':>4}{'mb':>4}{'rc':>4}"


def print_explain(cands) -> None:
    print(f"{HEADER}  verdict")
    for c in sorted(cands, key=lambda c: (not c.fits, c.rank or 0)):
        verdict = (f"ok #{c.rank}: {c.estimate.memory_gb:.2f} GB, step {c.estimate.step_seconds:.3f} s"
                   if c.fits else f"rejected: {c.reason}")
        print(f"{_row(c.degrees)}  {verdict}")


def print_table(args, config, hw, best, considered: int) -> None:
    print(f"{args.preset}: {config.num_parameters() / 1e9:.2f}B params on {hw.devices} x {hw.name} "
          f"({hw.memory_gb:g} GB, {hw.peak_tflops:g} TFLOPS {hw.dtype}); {considered} valid layouts, "
          f"{len(best)} shown that fit")
    print(f"{HEADER}{'acc':>5}{'weights':>9}{'grads':>7}{'optim':>7}{'activ':>7}{'buf':>6}{'mem GB':>8}{'step s':>9}"
          f"{'tok/s':>11}")
    for e in best:
        t = e.terms_gb
        print(f"{_row(e.layout)}{e.layout['accumulate_steps']:>5}{t['weights']:>9.2f}{t['gradients']:>7.2f}"
              f"{t['optimizer']:>7.2f}{t['activations']:>7.2f}{t['buffers']:>6.2f}{e.memory_gb:>8.2f}"
              f"{e.step_seconds:>9.3f}{e.tokens_per_second:>11.0f}")


def run(args) -> int:
    from ..config import get_preset
    from ..planner.search import consider
    from ..planner.write_config import load_base, run_config_dict, write_run_config

    config = get_preset(args.preset)
    hw = hardware_from_args(args)
    base = load_base(args.base_config) if args.write_config else None  # a broken file is refused before the search
    cands = consider(config, hw, args.global_batch, args.seq_length, allow_stage2=hw.name != "cpu")
    fitting = sorted((c for c in cands if c.fits), key=lambda c: c.rank)
    best = [c.estimate for c in fitting[: args.top]]
    if args.json:
        print(json.dumps({"considered": sum(c.estimate is not None for c in cands), "plans": [e.to_dict() for e in best],
                          "rejected": [{**c.degrees, "reason": c.reason} for c in cands if not c.fits]
                          if args.explain else None}, indent=2))
    elif args.explain:
        print_explain(cands)
    else:
        print_table(args, config, hw, best, sum(c.estimate is not None for c in cands))
    if not fitting:
        print("no layout fits: add devices or memory, lower the micro-batch, or see --explain")
        return 1
    if args.write_config:
        top = fitting[0]
        seq = args.seq_length or config.max_position_embeddings
        mapping = run_config_dict(args.preset, top.parallel, hw, seq, base)
        write_run_config(args.write_config, mapping, top.estimate, hw)
        layout = ", ".join(f"{k}={v}" for k, v in mapping["parallel"].items())
        print(f"wrote {args.write_config} ({layout}); validated for world size {hw.devices}")
    return 0
