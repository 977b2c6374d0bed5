"""Segments -> training examples: tokenize, truncate (`left` | `drop`), optionally pack, collate.

An example of `max_length` positions holds `max_length + 1` tokens T: input_ids = T[:-1],
labels = T[1:], loss_mask[j] = 1 when label j is a trainable token.

Truncation (`left`, the default), with L = max_length + 1 and the example split into *head*
(everything before the final response) and *tail* (final response + `<eot>`):

* fits: unchanged;
* head too long: the head loses tokens from its left (oldest context first);
* tail alone too long: the head keeps its last min(len(head), L // 2) tokens and the tail is cut
  on the right, its `<eot>` kept as the last token. The prompt is never dropped entirely.

`drop` skips every example longer than L. Both are counted (`TruncationStats`) and logged.

Packing (`pack_examples`): whole examples are concatenated greedily into sequences of at most L
tokens. Each example ends with `<eot>`, where the model's document reset (REF "document
boundaries", `eod_reset`) restarts position ids and blocks attention, so no example sees another;
the label that crosses a boundary (input `<eot>`, label = next example's first token) is masked.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SFTExample:
    input_ids: list[int]  # tokens[:-1]
    labels: list[int]  # tokens[1:]
    loss_mask: list[int]  # 1 where the label is a trainable token


@dataclass
class TruncationStats:
    """Counts per data file, logged once by the CLI."""

    policy: str = "left"
    examples: int = 0
    prompt_shortened: int = 0
    response_cut: int = 0
    dropped: int = 0
    kept: int = 0
    dropped_where: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.policy == "drop":
            return f"{self.kept} of {self.examples} examples kept; truncation=drop: {self.dropped} dropped (too long)"
        return (f"{self.kept} of {self.examples} examples; truncation=left: {self.prompt_shortened} prompts "
                f"shortened from the left, {self.response_cut} responses cut on the right (<eot> kept)")


def encode_segments(segments, tokenizer, eot_id: int, response_only_loss: bool = True):
    """(tokens, mask, tail_start): ids of every segment plus `<eot>`; mask 1 on trainable tokens;
    tail_start = index where the final response begins (its run of trainable tokens)."""
    tokens, mask = [], []
    tail_start, previous = 0, False
    for text, trainable in segments:
        ids = tokenizer.encode_ids(text) if text else []
        if trainable and not previous:
            tail_start = len(tokens)
        previous = trainable
        tokens += ids
        mask += [int(trainable or not response_only_loss)] * len(ids)
    if not segments or not segments[-1][1]:
        tail_start = len(tokens)
    return tokens + [eot_id], mask + [1], tail_start


def fit_tokens(tokens, mask, tail_start: int, limit: int, policy: str, stats: TruncationStats):
    """(tokens, mask) of at most `limit` tokens under `policy`, or None when dropped."""
    if len(tokens) <= limit:
        return tokens, mask
    if policy == "drop":
        stats.dropped += 1
        return None
    head_t, head_m, tail_t, tail_m = tokens[:tail_start], mask[:tail_start], tokens[tail_start:], mask[tail_start:]
    min_head = min(len(head_t), limit // 2)
    if len(tail_t) <= limit - min_head:
        keep = limit - len(tail_t)
        stats.prompt_shortened += 1
    else:
        keep = min_head
        room = limit - keep - 1
        tail_t, tail_m = tail_t[:room] + tail_t[-1:], tail_m[:room] + tail_m[-1:]  # <eot> stays last
        stats.response_cut += 1
    start = len(head_t) - keep
    return head_t[start:] + tail_t, head_m[start:] + tail_m


def build_examples(rows, tokenizer, max_length: int, eot_id: int = 9, policy: str = "left",
                   response_only_loss: bool = True, stats: TruncationStats | None = None) -> list[SFTExample]:
    """Rows (`data.Row`, or (prompt, response) pairs) -> examples of at most max_length positions."""
    stats = stats if stats is not None else TruncationStats(policy)
    examples = []
    for row in rows:
        segments = row.segments if hasattr(row, "segments") else _pair_segments(*row)
        tokens, mask, tail = encode_segments(segments, tokenizer, eot_id, response_only_loss)
        stats.examples += 1
        fitted = fit_tokens(tokens, mask, tail, max_length + 1, policy, stats)
        if fitted is None:
            stats.dropped_where.append(getattr(row, "where", "?"))
            continue
        tokens, mask = fitted
        stats.kept += 1
        examples.append(SFTExample(tokens[:-1], tokens[1:], mask[1:]))
    return examples


def _pair_segments(prompt: str, response: str):
    return ([(prompt, False)] if prompt else []) + [(response, True)]


def pack_examples(examples: list[SFTExample], max_length: int, eot_id: int = 9) -> list[SFTExample]:
    """Greedy first-fit packing of whole examples into sequences of <= max_length positions."""
    packed, cur_t, cur_m = [], [], []

    def flush():
        if cur_t:
            labels_mask = [m if cur_t[j] != eot_id else 0 for j, m in enumerate(cur_m[1:])]  # j = input index
            packed.append(SFTExample(cur_t[:-1], cur_t[1:], labels_mask))

    for ex in examples:
        tokens = [ex.input_ids[0]] + ex.labels  # the example's full token list (ends with <eot>)
        mask = [0] + ex.loss_mask
        if cur_t and len(cur_t) + len(tokens) > max_length + 1:
            flush()
            cur_t, cur_m = [], []
        cur_t, cur_m = cur_t + tokens, cur_m + mask
    flush()
    return packed


class SFTCollator:
    """Right-pad a batch; padded labels are the pad id (masked by the criterion) with loss_mask 0.
    `pad_to` fixes the width (pipeline parallel needs equal shapes in every micro-batch)."""

    def __init__(self, pad_token_id: int = 6, pad_to: int | None = None):
        self.pad = pad_token_id
        self.pad_to = pad_to

    def __call__(self, batch: list[SFTExample]) -> dict:
        import paddle

        width = self.pad_to or max(len(e.input_ids) for e in batch)

        def pad(rows, value):
            out = np.full([len(rows), width], value, dtype="int64")
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return paddle.to_tensor(out)

        return {
            "input_ids": pad([e.input_ids for e in batch], self.pad),
            "labels": pad([e.labels for e in batch], self.pad),
            "loss_mask": pad([e.loss_mask for e in batch], 0),
        }
