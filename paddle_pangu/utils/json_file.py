"""The one reader of a whole JSON file (config.json, manifests, checkpoint state, export metadata, weight
indexes, task files), with one policy: the parsed document, or one line naming the file for each way it can be
wrong. JSON-lines files are `utils/jsonl.py`'s; YAML is `utils/yaml_file.py`'s.

The caller names the kind of file (`what`, e.g. "checkpoint manifest") and the PanGuError subclass its
callers expect (a checkpoint reader raises CheckpointError, a task reader DataError), so the message and
the exit code stay those of the command that read it."""
from __future__ import annotations

import json

from paddle_pangu.errors import DataError

_TYPE_NAMES = {dict: "a JSON object", list: "a JSON array"}


def _refuse_constant(name: str):
    # Python's json accepts NaN / Infinity / -Infinity, which JSON does not define; nothing this package
    # writes holds them, so one in a file is corruption (or a hand edit) and must not become a silent NaN.
    raise ValueError(f"non-finite number {name} (JSON has no NaN or Infinity)")


def read_json(path: str, what: str, error: type[Exception] = DataError, expect: type | None = dict,
              max_bytes: int | None = None):
    """The document in `path`. Raises `error` with `{path}: <problem> (<what>)` when the file is missing or
    unreadable, larger than `max_bytes`, not UTF-8, not valid JSON (with its line and column), holds NaN or
    Infinity, or (`expect`) its top level is not a dict / list."""
    try:
        with open(path, "rb") as f:
            raw = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{path}: missing ({what})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a file ({what})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{path}: larger than {max_bytes} bytes, too large for {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}; expected {what})") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")  # the file ends early
        raise error(f"{path}: not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}; "
                    f"expected {what}{'; truncated?' if cut else ''})") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: {str(exc)[:120]} ({what})") from None
    if expect is not None and not isinstance(doc, expect):
        raise error(f"{path}: expected {what} as {_TYPE_NAMES.get(expect, expect.__name__)}, "
                    f"got {type(doc).__name__}")
    return doc
