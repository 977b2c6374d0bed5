"""Run one (task, shots): prompts, batched scoring or generation, per-example log, summary.

Candidate tasks: every candidate is one token sequence; an example's
candidates and several examples go through one forward pass
(`scoring.batched_candidate_losses`); the lowest mean loss after the shared
prefix wins (docs/REFERENCE.md "Classification-like tasks"). Generation tasks:
`paddle_pangu.inference.generation.generate` with the task's decoding settings
(REF "Decoding per task"); the text up to the first newline is the answer.
"""
from __future__ import annotations

import json
import time

import numpy as np
from tqdm import tqdm

from . import metrics
from .prompting import build_prompt, sample_demos
from .scoring import batched_candidate_losses, score_start
from .tasks.base import Example, TaskSpec

GENERATION_METRICS = {"em_f1": ("em", "f1"), "rouge1": ("rouge1",), "cloze_accuracy": ("accuracy",)}
_METRIC_FNS = {"em": metrics.exact_match, "f1": metrics.f1_score, "rouge1": metrics.rouge1,
               "accuracy": metrics.cloze_correct}
BINARY = {"accuracy", "em"}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _prompts(task, examples, pool, shots, seed, tokenizer, max_tokens, offset=0):
    return [build_prompt(task, ex, sample_demos(pool, ex, shots, seed, offset + i, task), tokenizer, max_tokens)
            for i, ex in enumerate(examples)]


def _candidate_records(task, examples, prompts, losses, shots, offset, tokenizer):
    out = []
    for i, (ex, p, loss) in enumerate(zip(examples, prompts, losses)):
        start, pred = score_start(p.token_ids), int(np.argmin(loss))
        cands = [{"text": t, "context": tokenizer.decode_ids(ids[:start]), "continuation": tokenizer.decode_ids(ids[start:]),
                  "token_ids": list(map(int, ids)), "score_start": start, "mean_loss": float(l)}
                 for t, ids, l in zip(p.texts, p.token_ids, loss)]
        out.append({"task": task.name, "index": offset + i, "id": ex.uid, "shots": shots, "shots_used": p.shots,
                    "gold": ex.gold, "prediction": pred, "correct": pred == ex.gold, "candidates": cands,
                    "_policy": p, "_scores": {"accuracy": float(pred == ex.gold)}, "_chance": 1 / len(ex.candidates)})
    return out


def _generation_records(task, examples, prompts, generated, shots, offset):
    names = GENERATION_METRICS[task.metric]
    out = []
    for i, (ex, p, text) in enumerate(zip(examples, prompts, generated)):
        answer = text.split("\n", 1)[0].strip()
        scores = {m: _METRIC_FNS[m](answer, ex.references) for m in names}
        out.append({"task": task.name, "index": offset + i, "id": ex.uid, "shots": shots, "shots_used": p.shots,
                    "prompt": p.texts[0], "generated": answer, "references": ex.references, **scores,
                    "_policy": p, "_scores": scores})
    return out


def _generate(model, tokenizer, task: TaskSpec, prompts, seed: int) -> list[str]:
    from ..inference.generation import generate
    from ..inference.sampling import SamplingConfig

    d = task.decoding  # its fields are named like SamplingConfig's; top_k 1 (greedy: do_sample False) is top_k off
    cfg = SamplingConfig.from_options(d, model.config, top_k=0 if d.top_k == 1 else d.top_k, seed=seed)
    return [tokenizer.decode_ids(ids) for ids in generate(model, [p.token_ids[0] for p in prompts], cfg)]


def evaluate_task(model, tokenizer, task: TaskSpec, examples: list[Example], pool: list[Example], shots: int,
                  seed: int = 0, batch_size: int = 16, log=None, progress: bool = True) -> dict:
    """Score `examples` with `shots` demonstrations from `pool`; write one JSON line per example to `log`."""
    context = model.config.max_position_embeddings
    max_tokens = context - task.decoding.max_new_tokens if task.kind == "generation" else context
    per_pass = max(1, batch_size // max(len(e.candidates) for e in examples)) if task.kind == "candidates" else batch_size
    records, t0 = [], time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"{task.name} {shots}-shot", unit="ex", disable=not progress)
    for n, chunk in enumerate(_chunks(examples, per_pass)):
        offset = n * per_pass
        prompts = _prompts(task, chunk, pool, shots, seed, tokenizer, max_tokens, offset)
        if task.kind == "candidates":
            losses = batched_candidate_losses(model, [p.token_ids for p in prompts], batch_size)
            new = _candidate_records(task, chunk, prompts, losses, shots, offset, tokenizer)
        else:
            new = _generation_records(task, chunk, prompts, _generate(model, tokenizer, task, prompts, seed + n), shots,
                                      offset)
        for r in new:
            if log is not None:
                log.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) + "\n")
        records.extend(new)
        bar.update(len(chunk))
    bar.close()
    return summarize(task, shots, records, time.perf_counter() - t0)


def summarize(task: TaskSpec, shots: int, records: list[dict], seconds: float) -> dict:
    names = list(records[0]["_scores"])
    out = {"task": task.name, "shots": shots, "n": len(records), "kind": task.kind}
    out["ci95"] = {}
    for m in names:
        mean, lo, hi = metrics.mean_ci95([r["_scores"][m] for r in records], binary=m in BINARY)
        out[m], out["ci95"][m] = mean, [lo, hi]
    if task.kind == "candidates":
        out["chance"] = float(np.mean([r["_chance"] for r in records]))
    policies = [r["_policy"] for r in records]
    out["prompt_policy"] = {
        "examples_with_demos_dropped": sum(p.demos_dropped > 0 for p in policies),
        "demos_dropped": sum(p.demos_dropped for p in policies),
        "examples_with_passage_truncated": sum(p.passage_chars_cut > 0 for p in policies),
        "examples_with_tokens_cut": sum(p.tokens_cut > 0 for p in policies),
        "mean_shots_used": float(np.mean([p.shots for p in policies])),
    }
    out["paper_2.6b_zero_shot"] = task.paper
    out["seconds"], out["examples_per_s"] = seconds, len(records) / max(seconds, 1e-9)
    return out
