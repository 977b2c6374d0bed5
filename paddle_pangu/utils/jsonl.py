"""Strict JSONL reading for small user files (tasks, fine-tuning sets): the first bad line is an error
naming file and line. (Corpus reading, which skips and counts bad lines, lives in data/readers.py.)"""
from __future__ import annotations

import json
from collections.abc import Iterator

from paddle_pangu.errors import DataError


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; invalid JSON or a non-object raises DataError."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
