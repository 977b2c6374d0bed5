"""Fine-tuning rows: JSONL reading (every bad row reported), the chat template, segments.

A row is one of (field names configurable through `DataArguments`)::

    {"prompt": "...", "response": "..."}      prompt optional; loss on the response
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    {"text": "..."}                            continued pretraining; loss on every token

Each row becomes *segments*: (text, trainable) pairs, followed by `<eot>` (id 9, REF "documents end
with 9"), which is trainable so the model learns to stop. `examples.py` tokenizes, truncates and
packs them.

The chat template (`render_chat`, `check_messages`) lives in `tokenizer/chat.py`: `pangu serve` prompts
with the same template, and the server must not import the fine-tuning package for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from ..tokenizer.chat import ASSISTANT_PREFIX, CHAT_ROLES, USER_PREFIX, check_messages, render_chat  # noqa: F401
from ..utils.jsonl import iter_jsonl

MAX_LISTED_ERRORS = 20  # the message lists this many; the count covers all


@dataclass
class Row:
    """One usable JSONL row: its segments and where it came from (for messages)."""

    segments: list[tuple[str, bool]]
    where: str


def row_segments(row: dict, fields) -> tuple[list | None, str | None]:
    """(segments, None) for a usable row, else (None, reason). `fields` is the DataArguments."""
    if fields.messages_field in row:
        problem = check_messages(row[fields.messages_field])
        return (None, problem) if problem else (render_chat(row[fields.messages_field]), None)
    if fields.response_field in row:
        response, prompt = row[fields.response_field], row.get(fields.prompt_field, "")
        if not isinstance(response, str) or not isinstance(prompt, str) or not response:
            return None, f"{fields.prompt_field!r} and {fields.response_field!r} must be strings, the response non-empty"
        return ([(prompt, False)] if prompt else []) + [(response, True)], None
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"]:
            return None, "'text' must be a non-empty string"
        return [(row["text"], True)], None
    return None, (f"expected a {fields.response_field!r} (with optional {fields.prompt_field!r}), a "
                  f"{fields.messages_field!r} or a 'text' field, got {sorted(row)}")


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def read_rows(path: str, fields) -> list[Row]:
    """Every usable row of a JSONL file. Bad rows (invalid JSON, missing or mistyped fields) are all
    collected and raised together as one DataError: the count, then `file:line: reason` for each."""
    rows, errors = [], []
    for lineno, row in iter_jsonl(path, collect=errors, what="the fine-tuning file"):
        if _has_lone_surrogate(row):
            errors.append(f"{path}:{lineno}: a string holds a lone UTF-16 surrogate escape (e.g. \\ud800), "
                          "which is not text")
            continue
        segments, problem = row_segments(row, fields)
        if problem:
            errors.append(f"{path}:{lineno}: {problem}")
        else:
            rows.append(Row(segments, f"{path}:{lineno}"))
    if errors:
        listed = "; ".join(errors[:MAX_LISTED_ERRORS])
        more = f"; ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        raise DataError(f"{path}: {len(errors)} bad row(s) of {len(errors) + len(rows)}: {listed}{more}")
    if not rows:
        raise DataError(f"{path}: no rows (expected JSON lines with prompt/response, messages or text)")
    return rows


def read_jsonl(path: str, prompt_field: str = "prompt", response_field: str = "response", text_field: str = "text"):
    """(prompt, response) pairs of a prompt/response or text file (bad rows: see `read_rows`)."""
    from types import SimpleNamespace

    fields = SimpleNamespace(prompt_field=prompt_field, response_field=response_field, messages_field="messages")
    pairs = []
    for row in read_rows(path, fields):
        prompt = "".join(t for t, trainable in row.segments if not trainable)
        response = "".join(t for t, trainable in row.segments if trainable)
        pairs.append((prompt, response))
    return pairs
