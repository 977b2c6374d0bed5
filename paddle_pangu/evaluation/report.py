"""Results: the JSON file, a table beside the paper's 2.6B zero-shot numbers (zero-shot rows only), a PNG of
score vs shots.

Scores are fractions in [0, 1] in the JSON; the table prints percent, as the
paper's Table 10 does (docs/REFERENCE.md "Paper Table 10, 2.6B zero-shot").
"""
from __future__ import annotations

import json

METRIC_ORDER = ("accuracy", "em", "f1", "rouge1")


def main_metric(result: dict) -> str:
    return next(m for m in ("accuracy", "f1", "rouge1", "em") if m in result)


def write_json(results: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, ensure_ascii=False, indent=2)


def _cell(result: dict) -> str:
    parts = [f"{100 * result[m]:.2f}" for m in METRIC_ORDER if m in result and not (m == "em" and "f1" not in result)]
    return "/".join(parts)


def _paper_cell(result: dict) -> str:
    """The paper's 2.6B number for the same shot count. REF gives only Table 10's zero-shot numbers, so a
    one- or few-shot row shows "-" rather than a zero-shot number beside a k-shot score."""
    if result.get("shots") != 0:
        return "-"
    paper = result.get("paper_2.6b_zero_shot") or {}
    values = [f"{paper[m]:.2f}" for m in METRIC_ORDER if m in paper]
    return "/".join(values) if values else "-"


def format_table(results: list[dict]) -> str:
    """One row per (task, shots): n, our score(s) in percent with the 95% interval of the main metric, paper."""
    head = f"{'task':<12}{'shots':>6}{'n':>6}  {'metric':<14}{'ours %':<16}{'95% CI':<16}{'chance':>7}  paper 2.6B 0-shot"
    rows = [head, "-" * len(head)]
    for r in results:
        if r["task"] == "perplexity":
            p = r["protocol"]
            chars = f", char ppl {r['char_perplexity']:.2f}" if "char_perplexity" in r else ""
            rows.append(f"perplexity: token ppl {r['perplexity']:.2f}{chars} over {r['tokens']} tokens "
                        f"({p['windows']} windows of {p['window']} tokens, stride {p['stride']})")
            continue
        names = "/".join(m for m in METRIC_ORDER if m in r)
        lo, hi = r["ci95"][main_metric(r)]
        chance = f"{100 * r['chance']:.1f}" if "chance" in r else "-"
        rows.append(f"{r['task']:<12}{r['shots']:>6}{r['n']:>6}  {names:<14}{_cell(r):<16}"
                    f"{f'{100 * lo:.1f}-{100 * hi:.1f}':<16}{chance:>7}  {_paper_cell(r)}")
    return "\n".join(rows)


def plot_scores(results: list[dict], path: str) -> None:
    """Main metric vs shots, one line per task, with the 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    tasks = list(dict.fromkeys(r["task"] for r in results if r["task"] != "perplexity"))
    for task in tasks:
        rows = sorted((r for r in results if r["task"] == task), key=lambda r: r["shots"])
        m = main_metric(rows[0])
        ys = [r[m] for r in rows]
        err = [[y - r["ci95"][m][0] for y, r in zip(ys, rows)], [r["ci95"][m][1] - y for y, r in zip(ys, rows)]]
        ax.errorbar([r["shots"] for r in rows], ys, yerr=err, marker="o", capsize=3, label=f"{task} ({m})")
    ax.set_xlabel("shots (demonstrations in the prompt)")
    ax.set_ylabel("score (fraction)")
    ax.set_ylim(0, 1)
    ax.set_title("score vs shots (bars: 95% CI)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
