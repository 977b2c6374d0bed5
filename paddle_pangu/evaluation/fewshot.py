"""Zero / one / few-shot classification (REF: K demonstrations concatenated before the query)."""
from __future__ import annotations

import random

import numpy as np
from tqdm import tqdm

from .scoring import candidate_losses
from .classification import ClassificationTask

DEMO_SEPARATOR = "\n"


def build_prompt(task: ClassificationTask, demos: list[tuple[str, int]], text: str, label: int) -> str:
    shots = [task.render(t, l) for t, l in demos]
    return DEMO_SEPARATOR.join(shots + [task.render(text, label)])


def evaluate_classification(model, tokenizer, task: ClassificationTask, shots: int = 0, num_eval: int = 200,
                            seed: int = 0, max_len: int | None = None, progress: bool = True) -> dict:
    """Accuracy of picking the lowest-loss candidate; demonstrations drawn per example from the pool."""
    demos_pool, eval_set = task.split(num_eval, seed)
    if shots > len(demos_pool):
        raise ValueError(f"task {task.name}: {shots} shots requested but only {len(demos_pool)} demonstrations left")
    rng = random.Random(seed + 1)
    max_len = max_len or model.config.max_position_embeddings
    correct, truncated = 0, 0
    for text, gold in tqdm(eval_set, desc=f"{task.name} {shots}-shot", disable=not progress, unit="ex"):
        demos = rng.sample(demos_pool, shots) if shots else []
        candidates = [tokenizer.encode_ids(build_prompt(task, demos, text, c)) for c in range(len(task.labels))]
        if max(len(c) for c in candidates) > max_len:  # keep the query: drop tokens from the front
            truncated += 1
            cut = max(len(c) for c in candidates) - max_len
            candidates = [c[cut:] for c in candidates]
        losses = candidate_losses(model, candidates)
        correct += int(np.argmin(losses) == gold)
    n = len(eval_set)
    return {"task": task.name, "shots": shots, "examples": n, "accuracy": correct / n, "truncated": truncated,
            "chance": 1.0 / len(task.labels)}
