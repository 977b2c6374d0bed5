"""Strict JSONL reading for small user files (tasks, fine-tuning sets): the first bad line is an error
naming file and line. (Corpus reading, which skips and counts bad lines, lives in data/readers.py.)"""
from __future__ import annotations

import json
from collections.abc import Iterator

from paddle_pangu.errors import DataError


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; invalid JSON or a non-object raises DataError."""
    try:
        fh = open(path, "rb")  # decoded per line: binary content names its line instead of a traceback
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
