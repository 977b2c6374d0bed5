"""`pangu train --nproc N` / `pangu finetune --nproc N`: start `paddle.distributed.launch` for the user, quietly.

The launcher's own configuration dump (about 35 lines) and every rank's output
go to `<log_dir>/launcher.log` and `<log_dir>/workerlog.<rank>`; the console
shows rank 0's training lines as they are written (`[HH:MM:SS rank0] ...`) and,
if the job fails, the tail of each log that says why. `--verbose` streams the
launcher's output unfiltered instead.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "entry", "train_worker.py")


def launch_command(train_argv: list[str], nproc: int, log_dir: str, worker: str = WORKER) -> list[str]:
    """The exact command line this module runs (also what the world-size error tells users to run)."""
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
            "--log_dir", log_dir, worker, *train_argv]


def _follow(path: str, stop: threading.Event, marker: "str | re.Pattern" = "rank0]", start: int = 0) -> None:
    """Print the lines of `path` past byte `start` that contain `marker` as they are written, until
    `stop` is set. A compiled regex `marker` is searched and the line printed from the match (a
    progress bar's carriage-return updates can share the line).

    `start`: the log's size before this run; the launcher appends to an existing workerlog, so a
    resumed run would otherwise print every earlier run's lines again."""
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(0.2)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        if start and os.path.getsize(path) >= start:
            fh.seek(start)
        while True:
            line = fh.readline()
            if line:
                if isinstance(marker, str):
                    shown = line if marker in line else None
                else:
                    found = marker.search(line)
                    shown = line[found.start():] if found else None
                if shown is not None:
                    print(shown.rstrip("\n"), flush=True)
                continue
            if stop.is_set():
                return
            time.sleep(0.2)


def _tail(path: str, n: int = 25) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return ""


def run_launched(train_argv: list[str], nproc: int, log_dir: str, verbose: bool = False, worker: str = WORKER,
                 marker: "str | re.Pattern" = "rank0]", command: str = "train") -> int:
    """Run the job under paddle.distributed.launch; return its exit code.

    `worker` is the per-rank script, `marker` selects the rank-0 log lines shown (see `_follow`),
    `command` names the `pangu` subcommand in error lines."""
    os.makedirs(log_dir, exist_ok=True)
    cmd = launch_command(train_argv, nproc, log_dir, worker)
    worker_log = os.path.join(log_dir, "workerlog.0")
    start = os.path.getsize(worker_log) if os.path.exists(worker_log) else 0
    print(f"launching {nproc} processes: logs in {log_dir}/ (workerlog.N, launcher.log)", flush=True)
    if verbose:
        return subprocess.call(cmd)
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(worker_log, stop, marker, start), daemon=True)
    follower.start()
    with open(os.path.join(log_dir, "launcher.log"), "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    stop.set()
    follower.join(timeout=5)
    if code != 0:
        for name in ["launcher.log", *(f"workerlog.{r}" for r in range(nproc))]:
            tail = _tail(os.path.join(log_dir, name))
            if tail:
                print(f"---- last lines of {os.path.join(log_dir, name)} ----\n{tail}", file=sys.stderr)
        for line in failed_ranks(os.path.join(log_dir, "launcher.log")):
            print(f"pangu {command}: error: {line}", file=sys.stderr)
    return code


_FAILED = re.compile(r"Container rank (\d+) status failed .*? code (-?\d+) log (\S+)")


def failed_ranks(launcher_log: str) -> list[str]:
    """One line per rank the launcher saw fail: the rank, how it ended and its log file."""
    try:
        with open(launcher_log, errors="replace") as f:
            found = _FAILED.findall(f.read())
    except OSError:
        return []
    out = []
    for rank, code, log in found:
        how = (f"was killed by {signal.Signals(-int(code)).name}" if int(code) < 0 and -int(code) in
               signal.valid_signals() else f"exited with code {code}")
        out.append(f"rank {rank} {how}; the job was stopped; its log: {log}")
    return out
