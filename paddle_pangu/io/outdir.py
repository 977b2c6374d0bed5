"""Output directories: one run at a time, and a usable directory before any work starts.

`lock_output_dir(path, command)` takes an exclusive `fcntl.flock` on
`<path>/.pangu.lock` for the life of the process and writes the holder (pid,
host, command, start time) into it. A second `pangu train` / `pangu finetune`
into the same directory is refused with one line naming the holder; the lock
belongs to the open file, so the kernel releases it when its process dies (a
`kill -9` included) and the next run takes a stale lock over without any
clean-up. (flock works across processes of one host and on local
filesystems; on NFS Linux maps it to POSIX locks, which the server arbitrates.)
"""
from __future__ import annotations

import fcntl
import os
import socket
import time

from ..errors import UsageError

LOCK_FILE = ".pangu.lock"
LOCKED_ENV = "PANGU_OUTPUT_DIR_LOCKED"  # set by `pangu train --nproc`: its launcher process holds the lock
_HELD: dict[str, int] = {}  # realpath -> fd, kept open for the life of the process


class OutputDirBusyError(UsageError):
    """Another live process holds the output directory's lock."""


def check_output_dir(path: str, what: str) -> None:
    """`path` can be a directory we write into: not a file, creatable, writable (one-line UsageError)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{what}={path!r} is a file, expected a directory (or a path that does not exist yet)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what}={path!r}: cannot create the directory ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what}={path!r}: the directory is not writable by this user")


def lock_output_dir(path: str, command: str, what: str = "output_dir") -> str:
    """Hold an exclusive lock on `path` until this process exits; OutputDirBusyError if another holds it."""
    check_output_dir(path, what)
    real = os.path.realpath(path)
    if real in _HELD:
        return os.path.join(path, LOCK_FILE)
    lock = os.path.join(path, LOCK_FILE)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as exc:
        raise UsageError(f"{what}={path!r}: cannot open its lock file {lock} ({exc.strerror or exc})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise OutputDirBusyError(f"{what}={path!r} is in use by {holder}; wait for it to finish or choose another "
                                 f"{what} (two runs writing one directory would mix their weights and metrics)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} ({command}, started "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC)\n".encode(), 0)
    _HELD[real] = fd
    return lock


def release_output_dir(path: str) -> None:
    """Give the lock up before the process ends (tests, or a command that runs two jobs in a row)."""
    fd = _HELD.pop(os.path.realpath(path), None)
    if fd is not None:
        os.close(fd)
