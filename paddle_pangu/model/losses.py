"""Per-token next-token loss and perplexity: the one NLL primitive and the one reduction that evaluation,
training's validation and the data quality filter share.

It lives under `model/` so `data/`, `training/` and `evaluation/` all import downward.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import paddle
import paddle.nn.functional as F


def _right_pad(seqs: Sequence[Sequence[int]], pad: int) -> np.ndarray:
    width = max(len(s) for s in seqs)
    out = np.full([len(seqs), width], pad, dtype="int64")
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return out


def _logits_of(out) -> paddle.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def _nll(logits: paddle.Tensor, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of `labels` [..., 1] under `logits` [..., V] in fp32, NaN where the logits are not finite."""
    logits = logits.astype("float32")
    # cross_entropy, not log_softmax: paddle 3.3.1's CPU log_softmax kernel is ~300x slower at vocab 40000
    nll = F.cross_entropy(logits, paddle.to_tensor(labels), reduction="none").numpy()[..., 0]
    # CPU cross_entropy gives ln V for NaN logits: a token whose logits are not finite scores NaN
    return np.where(paddle.isfinite(logits.sum(-1)).numpy(), nll, np.nan)


def _head_only_where_scored(model) -> bool:
    """True for a single-process PanGu model: its tied LM head can be run on the scored positions alone."""
    if getattr(model, "pangu", None) is None:
        return False
    return getattr(model, "parallel", None) is None or getattr(model.parallel, "mp_degree", 1) <= 1


@paddle.no_grad()
def token_losses(model, seqs: Sequence[Sequence[int]], pad_token_id: int | None = None,
                 starts: Sequence[int] | None = None) -> list[np.ndarray]:
    """Per-token next-token loss of each sequence: the NLL of tokens seq[start:], an array of length
    len(seq) - start (start = 1 by default: every token that has a prediction).

    `model` is any causal LM whose forward(input_ids) returns logits [B, S, V] (bare, first in a
    tuple, or as `.logits`). Sequences are right-padded, so the padding never reaches a real token.
    With `starts`, a single-process PanGu model (`.pangu` backbone, tied word embedding) runs its
    [N, H] x [H, V] head only on the positions that predict scored tokens (the head dominates a small
    model's forward pass); the values equal the full forward's `token_losses(model, seqs)[i][start - 1:]`.
    """
    pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
    ids = _right_pad(seqs, pad)
    if starts is None or not _head_only_where_scored(model):
        nll = _nll(_logits_of(model(paddle.to_tensor(ids[:, :-1]))), ids[:, 1:, None])  # [B, S-1]
        starts = [1] * len(seqs) if starts is None else starts
        return [nll[row, s - 1: len(q) - 1] for row, (q, s) in enumerate(zip(seqs, starts))]
    rows, cols = [], []
    for r, (q, s) in enumerate(zip(seqs, starts)):
        rows += [r] * (len(q) - s)
        cols += list(range(s - 1, len(q) - 1))  # position t predicts token t + 1
    backbone = model.pangu
    hidden = backbone(paddle.to_tensor(ids[:, :-1]))  # [B, S-1, H]
    picked = paddle.gather_nd(hidden, paddle.to_tensor(np.stack([rows, cols], 1).astype("int64")))  # [N, H]
    weight = backbone.embeddings.word_embeddings.weight  # [V, H], tied head (REF "output head")
    quantized = getattr(model, "quantized_head", None)  # --weights int8 / bf16: the head the forward reads
    if quantized is not None:
        logits = quantized(picked.unsqueeze(0))[0].astype("float32")  # [N, V]
    else:
        logits = paddle.matmul(picked.astype("float32"), weight.astype("float32"), transpose_y=True)  # [N, V]
    nll = _nll(logits, ids[rows, np.array(cols) + 1][:, None])  # [N]
    out, at = [], 0
    for q, s in zip(seqs, starts):
        out.append(nll[at: at + len(q) - s])
        at += len(q) - s
    return out


class LossMean:
    """Weighted running mean of losses, the one perplexity reduction: `add(mean_loss, weight)`.

    Token-weighted (weight = the batch's token count) it is the corpus perplexity `pangu evaluate`
    reports, sum of token NLLs / token count; with weight 1 per batch it is the mean of per-batch mean
    losses, the training objective the trainer logs. They agree when every batch counts the same tokens.
    """

    def __init__(self):
        self.total, self.weight = 0.0, 0

    def add(self, loss: float, weight: int = 1) -> None:
        self.total += float(loss) * weight
        self.weight += weight

    @property
    def mean(self) -> float:
        return self.total / self.weight


def perplexity_of(mean_loss: float, cap: float | None = None) -> float:
    """exp(mean loss); with `cap`, the loss is capped first so a diverged run still logs a number."""
    return math.exp(mean_loss if cap is None else min(mean_loss, cap))
