"""A small value computed once per machine and kept as JSON beside the compiled kernels.

The file is `<sha256 of the body>\n<body>`: a damaged or foreign file fails the digest or the caller's own
check, and the value is then computed and written again (`io/durable.atomic_write_text`: no reader sees half
a file); a cache that cannot be written only costs the next process the computation. Never pickled."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from .durable import atomic_write_text


def cached_json(path: Path, compute: Callable[[], Any], decode: Callable[[Any], Any]) -> Any:
    """`decode(json value in path)`, or `decode(compute())` written to `path` when the file is missing, fails
    its digest, or `decode` refuses it (ValueError / TypeError / KeyError)."""
    try:
        digest, body = path.read_text(encoding="utf-8").split("\n", 1)
        if hashlib.sha256(body.encode()).hexdigest() == digest:
            return decode(json.loads(body))
    except (OSError, ValueError, TypeError, KeyError):
        pass
    value = compute()
    body = json.dumps(value, separators=(",", ":"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(path), hashlib.sha256(body.encode()).hexdigest() + "\n" + body)
    except OSError:
        pass
    return decode(json.loads(body))
