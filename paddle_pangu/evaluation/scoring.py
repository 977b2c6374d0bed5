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
import paddle.nn.functional as F

from ..model.losses import token_losses


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


def _mean_after(losses: np.ndarray, start: int) -> float:
    # the loss at index t scores token t + 1, so tokens from `start` on are losses[start - 1:]
    return float(losses[start - 1:].mean())


def candidate_losses(model, candidates: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean loss over each candidate's tokens after the prefix all candidates share (REF), one forward pass."""
    start = score_start(candidates)
    return np.array([_mean_after(l, start) for l in token_losses(model, candidates)])


@paddle.no_grad()
def scored_token_losses(model, seqs: Sequence[Sequence[int]], starts: Sequence[int]) -> list[np.ndarray]:
    """NLL of tokens seq[start:] for each right-padded sequence, with the tied LM head run only on the
    positions that predict them (the [N, H] x [H, V] head dominates a small model's forward pass).
    Same values as `token_losses(model, seqs)[i][start - 1:]`; models without the PanGu backbone
    (`.pangu` + tied word embedding) go through `token_losses`."""
    backbone = getattr(model, "pangu", None)
    if backbone is None or getattr(model, "parallel", None) is not None and getattr(model.parallel, "mp_degree", 1) > 1:
        return [l[s - 1:] for l, s in zip(token_losses(model, seqs), starts)]
    width = max(len(q) for q in seqs)
    ids = np.full([len(seqs), width], model.config.pad_token_id, dtype="int64")
    rows, cols = [], []
    for r, (q, s) in enumerate(zip(seqs, starts)):
        ids[r, : len(q)] = q
        rows += [r] * (len(q) - s)
        cols += list(range(s - 1, len(q) - 1))  # position t predicts token t + 1
    hidden = backbone(paddle.to_tensor(ids[:, :-1]))  # [B, S-1, H]
    picked = paddle.gather_nd(hidden, paddle.to_tensor(np.stack([rows, cols], 1).astype("int64")))  # [N, H]
    weight = backbone.embeddings.word_embeddings.weight  # [V, H], tied head (REF "output head")
    logits = paddle.matmul(picked.astype("float32"), weight.astype("float32"), transpose_y=True)  # [N, V]
    labels = paddle.to_tensor(ids[rows, np.array(cols) + 1][:, None])
    # cross_entropy, not log_softmax: paddle 3.3.1's CPU log_softmax kernel is ~300x slower at vocab 40000
    nll = F.cross_entropy(logits, labels, reduction="none").numpy()[:, 0]
    out, at = [], 0
    for q, s in zip(seqs, starts):
        out.append(nll[at: at + len(q) - s])
        at += len(q) - s
    return out


def batched_candidate_losses(model, groups: Sequence[Sequence[Sequence[int]]], batch_size: int = 16) -> list[np.ndarray]:
    """`candidate_losses` for many examples: whole examples are packed, right-padded, into forward passes of
    at most `batch_size` sequences (an example with more candidates than that gets a pass of its own)."""
    out: list[np.ndarray] = []
    pending: list[Sequence[Sequence[int]]] = []

    def flush():
        flat = [seq for g in pending for seq in g]
        starts = [score_start(g) for g in pending for _ in g]
        losses = scored_token_losses(model, flat, starts)
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


@paddle.no_grad()
def perplexity(model, samples: Iterable[np.ndarray], batch_size: int = 8, tokenizer=None) -> dict:
    """exp(mean NLL) over packed held-out samples of seq_len + 1 tokens (pad tokens excluded).

    Protocol: each sample is one window of `window` tokens scored once (stride = window, no overlap,
    no context carried across windows). With a tokenizer, also character-level perplexity:
    exp(total NLL / characters of the scored tokens), comparable across tokenizers.
    """
    total_nll, total_tokens, total_chars, windows, width, batch = 0.0, 0, 0, 0, 0, []
    pad = model.config.pad_token_id

    def flush():
        nonlocal total_nll, total_tokens, total_chars, windows
        arr = np.stack(batch).astype("int64")
        loss, _ = model(paddle.to_tensor(arr[:, :-1]), labels=paddle.to_tensor(arr[:, 1:]))
        count = int((arr[:, 1:] != pad).sum())
        total_nll += float(loss) * count
        total_tokens += count
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
    if total_tokens == 0:
        raise ValueError("perplexity: no held-out tokens to score")
    mean = total_nll / total_tokens
    out = {"loss": mean, "perplexity": math.exp(mean), "tokens": total_tokens,
           "protocol": {"window": width, "stride": width, "windows": windows, "scored_tokens_per_window": width - 1}}
    if tokenizer is not None and total_chars:
        out.update(characters=total_chars, char_perplexity=math.exp(total_nll / total_chars))
    return out
