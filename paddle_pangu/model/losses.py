"""Per-token next-token loss: the one NLL primitive that evaluation and the data quality filter share.

It lives under `model/` so both `data/` and `evaluation/` import downward.
"""
from __future__ import annotations

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


@paddle.no_grad()
def token_losses(model, seqs: Sequence[Sequence[int]], pad_token_id: int | None = None) -> list[np.ndarray]:
    """Per-token next-token loss of each sequence: list of arrays of length len(seq) - 1.

    `model` is any causal LM whose forward(input_ids) returns logits [B, S, V] (bare, first in a
    tuple, or as `.logits`). Sequences are right-padded, so the padding never reaches a real token.
    """
    pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
    ids = _right_pad(seqs, pad)
    out = model(paddle.to_tensor(ids[:, :-1]))
    logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)  # [B, S-1, V]
    # cross_entropy, not log_softmax: paddle 3.3.1's CPU log_softmax kernel is ~300x slower at vocab 40000
    labels = paddle.to_tensor(ids[:, 1:, None])
    nll = F.cross_entropy(logits.astype("float32"), labels, reduction="none").numpy()[..., 0]  # [B, S-1]
    # CPU cross_entropy gives ln V for NaN logits: a token whose logits are not finite scores NaN
    nll = np.where(paddle.isfinite(logits.astype("float32").sum(-1)).numpy(), nll, np.nan)
    return [nll[row, : len(s) - 1] for row, s in enumerate(seqs)]
