"""Scoring primitives of the paper's evaluation (REF "Evaluation protocol").

- `candidate_losses`: classification-like tasks fill a template per candidate
  and score each by the mean LM loss over the tokens after the shared prefix;
  the lowest loss wins.
- `perplexity`: exp of the token-weighted mean next-token loss on held-out
  packed samples.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import paddle

from ..model.losses import token_losses


def shared_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of all sequences."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def candidate_losses(model, candidates: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean loss over each candidate's tokens after the prefix all candidates share (REF)."""
    start = shared_prefix_len(candidates)
    start = min(start, min(len(c) for c in candidates) - 1)
    losses = token_losses(model, candidates)
    # the loss at index t scores token t + 1, so tokens from `start` on are losses[start - 1:]
    return np.array([float(l[max(start - 1, 0):].mean()) for l in losses])


@paddle.no_grad()
def perplexity(model, samples: Iterable[np.ndarray], batch_size: int = 8) -> dict:
    """exp(mean NLL) over packed held-out samples of seq_len + 1 tokens (pad tokens excluded)."""
    total_nll, total_tokens, batch = 0.0, 0, []

    def flush():
        nonlocal total_nll, total_tokens
        arr = np.stack(batch).astype("int64")
        loss, _ = model(paddle.to_tensor(arr[:, :-1]), labels=paddle.to_tensor(arr[:, 1:]))
        count = int((arr[:, 1:] != model.config.pad_token_id).sum())
        total_nll += float(loss) * count
        total_tokens += count
        batch.clear()

    model.eval()
    for sample in samples:
        batch.append(np.asarray(sample))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if total_tokens == 0:
        raise ValueError("perplexity: no held-out tokens to score")
    mean = total_nll / total_tokens
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": total_tokens}
