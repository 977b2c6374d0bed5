"""Scoring primitives of the paper's evaluation (REF "Evaluation protocol").

- `batched_candidate_losses` (one example: `candidate_losses`): the one
  candidate scorer. Classification-like tasks fill a template per candidate
  and score each by the mean LM loss over the tokens after the shared prefix;
  the lowest loss wins. The per-token losses are `model.losses.token_losses`.
- `perplexity`: exp of the token-weighted mean next-token loss on held-out
  packed samples.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import paddle

from ..model.losses import LossMean, perplexity_of, token_losses


def shared_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of all sequences."""
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return i
    return n


def score_start(candidates: Sequence[Sequence[int]]) -> int:
    """First scored token: after the shared prefix, at least 1 (token 0 has no prediction), and every
    candidate keeps at least one scored token."""
    start = min(shared_prefix_len(candidates), min(len(c) for c in candidates) - 1)
    return max(start, 1)


def batched_candidate_losses(model, groups: Sequence[Sequence[Sequence[int]]], batch_size: int = 16) -> list[np.ndarray]:
    """`candidate_losses` for many examples: whole examples are packed, right-padded, into forward passes of
    at most `batch_size` sequences (an example with more candidates than that gets a pass of its own)."""
    out: list[np.ndarray] = []
    pending: list[Sequence[Sequence[int]]] = []

    def flush():
        flat = [seq for g in pending for seq in g]
        starts = [score_start(g) for g in pending for _ in g]
        losses = token_losses(model, flat, starts=starts)
        row = 0
        for g in pending:
            out.append(np.array([float(losses[row + i].mean()) for i in range(len(g))]))
            row += len(g)
        pending.clear()

    for group in groups:
        if pending and sum(map(len, pending)) + len(group) > batch_size:
            flush()
        pending.append(group)
    if pending:
        flush()
    return out


def candidate_losses(model, candidates: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean loss over each candidate's tokens after the prefix all candidates share (REF), one forward pass:
    `batched_candidate_losses` for one example."""
    return batched_candidate_losses(model, [candidates], batch_size=len(candidates))[0]


@paddle.no_grad()
def perplexity(model, samples: Iterable[np.ndarray], batch_size: int = 8, tokenizer=None) -> dict:
    """exp(mean NLL) over packed held-out samples of seq_len + 1 tokens (pad tokens excluded).

    Protocol: each sample is one window of `window` tokens scored once (stride = window, no overlap,
    no context carried across windows). With a tokenizer, also character-level perplexity:
    exp(total NLL / characters of the scored tokens), comparable across tokenizers.
    """
    nll, total_chars, windows, width, batch = LossMean(), 0, 0, 0, []
    pad = model.config.pad_token_id

    def flush():
        nonlocal total_chars, windows
        arr = np.stack(batch).astype("int64")
        loss, _ = model(paddle.to_tensor(arr[:, :-1]), labels=paddle.to_tensor(arr[:, 1:]))  # mean over non-pad labels
        nll.add(loss, weight=int((arr[:, 1:] != pad).sum()))  # token-weighted: sum of token NLLs / tokens
        windows += len(batch)
        if tokenizer is not None:
            total_chars += sum(len(tokenizer.decode_ids([int(t) for t in row[1:] if t != pad])) for row in arr)
        batch.clear()

    model.eval()
    for sample in samples:
        batch.append(np.asarray(sample))
        width = len(batch[-1])
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if nll.weight == 0:
        raise ValueError("perplexity: no held-out tokens to score")
    out = {"loss": nll.mean, "perplexity": perplexity_of(nll.mean), "tokens": nll.weight,
           "protocol": {"window": width, "stride": width, "windows": windows, "scored_tokens_per_window": width - 1}}
    if tokenizer is not None and total_chars:
        out.update(characters=total_chars, char_perplexity=math.exp(nll.total / total_chars))
    return out
