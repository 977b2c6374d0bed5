"""Supervised fine-tuning data: JSONL prompt/response pairs -> masked LM examples.

Each line is {"prompt": ..., "response": ...} (field names configurable) or
{"text": ...} for plain continued pretraining. The example is
prompt + response + <eot> (REF: documents end with 9); the loss covers the
response and the separator only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..utils.jsonl import iter_jsonl


@dataclass
class SFTExample:
    input_ids: list[int]  # tokens[:-1]
    labels: list[int]  # tokens[1:]
    loss_mask: list[int]  # 1 where the label is a response token


def read_jsonl(path: str, prompt_field: str = "prompt", response_field: str = "response", text_field: str = "text"):
    """Yield (prompt, response) pairs; errors name the file, line and the fields expected."""
    for lineno, row in iter_jsonl(path):
        if response_field in row:
            yield str(row.get(prompt_field, "")), str(row[response_field])
        elif text_field in row:
            yield "", str(row[text_field])
        else:
            raise ValueError(
                f"{path}:{lineno}: expected a {response_field!r} (with optional {prompt_field!r}) or a "
                f"{text_field!r} field, got {sorted(row)}"
            )


def build_examples(pairs, tokenizer, max_length: int, eot_id: int = 9) -> list[SFTExample]:
    """Tokenize pairs; truncate from the left of the prompt so the response survives."""
    examples = []
    for prompt, response in pairs:
        p = tokenizer.encode_ids(prompt) if prompt else []
        r = tokenizer.encode_ids(response) + [eot_id]
        r = r[: max_length + 1]
        p = p[max(0, len(p) + len(r) - (max_length + 1)):]
        tokens = p + r
        if len(tokens) < 2:
            continue
        mask = [0] * len(p) + [1] * len(r)
        examples.append(SFTExample(tokens[:-1], tokens[1:], mask[1:]))
    return examples


class SFTCollator:
    """Right-pad a batch; padded labels are the pad id (masked by the criterion) with loss_mask 0."""

    def __init__(self, pad_token_id: int = 6):
        self.pad = pad_token_id

    def __call__(self, batch: list[SFTExample]) -> dict:
        import paddle

        width = max(len(e.input_ids) for e in batch)

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
