"""Helpers shared by the C++ pieces built on first use (`kernels/`, `devices/sim_npu/`): where builds are
cached, the lock the processes of one launch share, and the one-line report of a failed build.
Standard library only: `devices.sim_npu` uses them before Paddle is imported."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

CACHE_ENV = "PANGU_KERNEL_CACHE"


def cache_root(kind: str) -> Path:
    """`$PANGU_KERNEL_CACHE/<kind>` or `~/.cache/paddle_pangu/<kind>`."""
    env = os.environ.get(CACHE_ENV)
    if env:  # the fused kernels' builds sit directly in it (as before this module), others in a sub-folder
        return Path(env) if kind == "kernels" else Path(env) / kind
    return Path(os.path.expanduser("~")) / ".cache" / "paddle_pangu" / kind


@contextlib.contextmanager
def build_lock(where: Path):
    """Exclusive lock on `where/lock`: the other processes of a launch wait for the one build."""
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def failure_line(exc: BaseException, log: Path) -> str:
    """'build failed (<kind>: <first line>; log <path>)': what the one-line report says."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"build failed ({type(exc).__name__}: {first}; log {log})"
