"""The JSON-lines reader for small user files (tasks, fine-tuning sets), with an explicit policy for bad
lines: strict (the first bad line is an error naming file and line) or collect-all (every bad line is
listed, so the caller can report them together). Corpus reading, which skips and counts bad lines, lives
in data/readers.py."""
from __future__ import annotations

import json
from collections.abc import Iterator

from paddle_pangu.errors import DataError


def iter_jsonl(path: str, collect: list[str] | None = None, what: str = "") -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line. A line that is not UTF-8, not valid JSON or
    not an object is a bad line: with `collect=None` (strict) it raises DataError `file:line: reason`;
    with a list (collect-all) that message is appended to it and the line skipped. An unreadable file
    raises DataError either way (`what` names the kind of file in that message)."""
    try:
        fh = open(path, "rb")  # decoded per line: binary content names its line instead of a traceback
    except OSError as exc:
        raise DataError(f"{path}: cannot read{' ' + what if what else ''} ({exc.strerror or exc})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 text (byte {exc.start} of the line)"
            else:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    problem = f"not valid JSON ({exc.msg})"
                else:
                    if isinstance(row, dict):
                        yield lineno, row
                        continue
                    problem = f"expected a JSON object, got {type(row).__name__}"
            if collect is None:
                raise DataError(f"{path}:{lineno}: {problem}")
            collect.append(f"{path}:{lineno}: {problem}")
