"""Check the planner against short real trainings on this machine (table + plot for docs/PLANNER.md).

    python tools/validate_planner.py --out docs/planner_validation            # every case (~15 min loaded)
    python tools/validate_planner.py --cases single mp2 --steps 3 --out /tmp/v

Each case of `paddle_pangu.planner.validate.CASES` (mini model, seq 128, fp32 CPU: one process,
dp2, mp2 (recompute off/on), pp2 with 4 micro-batches, sharding stage 1 and 2, recompute on one
process) trains `--steps` steps; every process reports its memory by term from paddle's host
allocator statistics and its step time (planner/measure.py). Writes <out>.json, <out>.md (the
tables) and <out>.png (predicted vs measured); exits 1 if any peak is off by more than 15%.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from paddle_pangu.planner.validate import CASES, compare, run_case, run_config_for

MB = 1e6


def _tokens(run_config: dict) -> int:
    from paddle_pangu.planner.validate import planner_inputs

    _, par, _ = planner_inputs(run_config)
    return par.global_batch_size * run_config["data"]["seq_len"]


def memory_table(rows: list[dict]) -> str:
    head = ("| case | rank (stage) | weights | gradients | optimizer | buffers | activations | peak | "
            "measured peak | error | RSS peak delta |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        p, m = r["pred"], r["meas"]
        cell = lambda k: f"{p[k] / MB:.1f} / {m[k] / MB:.1f}"  # noqa: E731
        lines.append(f"| {r['case']} | {r['rank']} ({r['stage']}) | {cell('weights')} | {cell('gradients')} | "
                     f"{cell('optimizer')} | {p['buffers'] / MB:.1f} / {(m['persistent'] - m['weights'] - m['gradients'] - m['optimizer']) / MB:.1f} | "
                     f"{cell('activations')} | {p['peak'] / MB:.1f} | {m['peak'] / MB:.1f} | {r['error'] * 100:+.1f}% | "
                     f"{m['rss_peak_delta'] / MB:.0f} |")
    return "\n".join(lines)


def time_table(summary: list[dict]) -> str:
    lines = ["| case | processes | tokens/step | predicted step s | measured CPU s (slowest rank) | measured wall s | "
             "predicted tokens/s | measured tokens/CPU-s | predicted rank | measured rank |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['case']} | {s['world']} | {s['tokens']} | {s['step_pred']:.2f} | {s['step_cpu']:.2f} | "
                     f"{s['step_wall']:.2f} | {s['tps_pred']:.0f} | {s['tps_meas']:.0f} | {s['rank_pred']} | "
                     f"{s['rank_meas']} |")
    return "\n".join(lines)


def summarise(results: dict) -> list[dict]:
    """Per case: throughput predicted vs measured and the ranks of both among the 2-process layouts."""
    out = []
    for case, rows in results.items():
        tokens = _tokens(run_config_for(case))
        cpu = max(r["step_cpu"] for r in rows)
        out.append({"case": case, "world": len(rows), "tokens": tokens, "step_pred": rows[0]["step_pred"],
                    "step_cpu": cpu, "step_wall": max(r["step_wall"] for r in rows),
                    "tps_pred": tokens / rows[0]["step_pred"], "tps_meas": tokens / cpu})
    for key, rank in (("tps_pred", "rank_pred"), ("tps_meas", "rank_meas")):
        two = sorted((s for s in out if s["world"] == 2), key=lambda s: -s[key])
        for i, s in enumerate(two, 1):
            s[rank] = i
        for s in out:
            s.setdefault(rank, "-")
    return out


def spearman(summary: list[dict]) -> float:
    two = [s for s in summary if s["world"] == 2]
    n = len(two)
    if n < 2:
        return float("nan")
    d2 = sum((s["rank_pred"] - s["rank_meas"]) ** 2 for s in two)
    return 1 - 6 * d2 / (n * (n * n - 1))


def plot(rows: list[dict], summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    meas = [r["meas"]["peak"] / MB for r in rows]
    pred = [r["pred"]["peak"] / MB for r in rows]
    ax1.scatter(meas, pred, c="tab:blue")
    for r, x, y in zip(rows, meas, pred):
        ax1.annotate(f"{r['case']}:{r['rank']}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lim = [0, max(meas + pred) * 1.1]
    ax1.plot(lim, lim, "k-", lw=0.8, label="predicted = measured")
    ax1.fill_between(lim, [0.85 * v for v in lim], [1.15 * v for v in lim], color="grey", alpha=0.2, label="±15%")
    ax1.set(xlabel="measured peak per process (MB, allocator)", ylabel="planner estimate (MB)",
            title="memory per process", xlim=lim, ylim=lim)
    ax1.legend(fontsize=8)
    ax2.scatter([s["tps_meas"] for s in summary], [s["tps_pred"] for s in summary], c="tab:orange")
    for s in summary:
        ax2.annotate(s["case"], (s["tps_meas"], s["tps_pred"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax2.set(xlabel="measured tokens per CPU-second (slowest rank)", ylabel="planner tokens/s (cpu preset)",
            title="throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default="docs/planner_validation", help="path prefix of the .json/.md/.png outputs")
    p.add_argument("--from-json", default=None, help="re-render tables/plot from a previous <out>.json")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            saved = json.load(f)
        measured, load = saved["measured"], saved.get("uptime", "")
    else:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        measured = {}
        for case in args.cases:
            measured[case] = run_case(run_config_for(case), steps=args.steps)
            print(f"{case}: done", flush=True)
    results = {case: compare(case, run_config_for(case), m) for case, m in measured.items()}
    rows = [r for rs in results.values() for r in rs]
    summary = summarise(results)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump({"uptime": load, "measured": measured, "rows": rows, "summary": summary}, f, indent=1)
    text = (f"Load at start: `{load}`\n\nMemory, MB (predicted / measured):\n\n{memory_table(rows)}\n\n"
            f"Step time:\n\n{time_table(summary)}\n\nSpearman rank correlation of throughput over the 2-process "
            f"layouts: {spearman(summary):.2f}\n")
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    plot(rows, summary, args.out + ".png")
    print(text)
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst peak error {worst * 100:.1f}% ({'within' if worst <= 0.15 else 'OUTSIDE'} ±15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
