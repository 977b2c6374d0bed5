"""`pangu bench`: benchmarks as ratios against a baseline measured in the same run; JSON + a table."""
from __future__ import annotations

import argparse
import json

TARGETS = ("tokenize", "train", "generate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", default=list(TARGETS), choices=TARGETS, help="what to measure (default: all)")
    p.add_argument("--preset", default="mini")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--mb", type=float, default=2.0, help="tokenize: corpus size in MB")
    p.add_argument("--workers", type=int, default=None, help="tokenize: worker processes")
    p.add_argument("--json", default=None, help="also write the JSON results to this file")


def _tokenize(args) -> dict:
    from ..data.benchmark import run_benchmark

    r = run_benchmark(args.mb, args.workers)
    return {"name": "tokenize", "config": f"{args.mb} MB", "ours_tokens_per_s": r.get("pipeline_mb_s"),
            "baseline": "jieba+sentencepiece one doc at a time", "baseline_tokens_per_s": r.get("reference_mb_s"),
            "ratio": r.get("speedup"), "unit": "MB/s", "detail": r}


def run(args) -> int:
    from .model_bench import bench_generate, bench_train

    results = []
    for target in args.targets:
        if target == "tokenize":
            results.append(_tokenize(args))
        elif target == "train":
            results.append(bench_train(args.preset, args.batch, args.seq, args.steps))
        else:
            results.append(bench_generate(args.preset))
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(f"\n{'benchmark':<12}{'config':<22}{'ours':>12}{'baseline':>12}{'ratio':>8}  baseline")
    for r in results:
        unit = r.get("unit", "tok/s")
        print(f"{r['name']:<12}{r['config']:<22}{r['ours_tokens_per_s'] or 0:>12.1f}{r['baseline_tokens_per_s'] or 0:>12.1f}"
              f"{r['ratio'] or 0:>8.2f}  {r['baseline']} ({unit})")
    return 0
