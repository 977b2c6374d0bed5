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
                 marker: "str | re.Pattern" = "rank0]", command: str = "train", env: dict | None = None) -> int:
    """Run the job under paddle.distributed.launch; return its exit code.

    `worker` is the per-rank script, `marker` selects the rank-0 log lines shown (see `_follow`),
    `command` names the `pangu` subcommand in error lines, `env` is added to the workers' environment only."""
    env = {**os.environ, **(env or {})}
    os.makedirs(log_dir, exist_ok=True)
    cmd = launch_command(train_argv, nproc, log_dir, worker)
    worker_log = os.path.join(log_dir, "workerlog.0")
    start = os.path.getsize(worker_log) if os.path.exists(worker_log) else 0
    print(f"launching {nproc} processes: logs in {log_dir}/ (workerlog.N, launcher.log)", flush=True)
    if verbose:
        return subprocess.call(cmd, env=env)
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(worker_log, stop, marker, start), daemon=True)
    follower.start()
    with open(os.path.join(log_dir, "launcher.log"), "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
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


# ----------------------------------------------------------------------------- any command, rank 0 on the console
# `pangu evaluate / generate / serve --nproc N` (inference/tensor_parallel.py): the same launcher, but rank 0's
# stdout and stderr reach the console unchanged (the generated text, the report table, the server's lines), so
# the command looks as it does in one process; the other ranks' output stays in <log_dir>/workerlog.N.

COMMAND_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "entry", "command_worker.py")
RANK0_OUT_ENV, RANK0_ERR_ENV, RANK0_PID_ENV = "PANGU_RANK0_STDOUT", "PANGU_RANK0_STDERR", "PANGU_RANK0_PIDFILE"


def strip_launch_flags(argv: list[str], flags: tuple[str, ...] = ("--nproc", "--launch-logs")) -> list[str]:
    """`argv` without the options that only the launching process reads (`--nproc N`, `--nproc=N`, ...)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in flags:
            skip = True
            continue
        if any(arg.startswith(f + "=") for f in flags):
            continue
        out.append(arg)
    return out


# rank 0's stderr lines that one process does not print: fleet / gloo set-up logs, glog lines, paddle's
# flag banner and warnings, the per-rank runtime line (all still in <log_dir>/rank0.stderr)
_NOISE = re.compile(rb"^(\[\d{4}-\d\d-\d\d |[IWE]\d{4} \d|={5,}|FLAGS\(|\s+warnings\.warn|.*Warning: |pangu runtime: )")


def _copy_raw(path: str, sink, stop: threading.Event, drop_noise: bool = False) -> None:
    """Copy the bytes appended to `path` to `sink` (a binary stream) as they come, until `stop` is set and
    everything is copied: streamed text stays streamed. `drop_noise`: whole lines, without `_NOISE`."""
    while not os.path.exists(path) and not stop.is_set():
        time.sleep(0.05)
    if not os.path.exists(path):
        return
    pending = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            if chunk and drop_noise:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                chunk = b"".join(line + b"\n" for line in lines if not _NOISE.match(line))
            if chunk:
                sink.write(chunk)
                sink.flush()
                continue
            if stop.is_set():
                if pending and not _NOISE.match(pending):
                    sink.write(pending)
                    sink.flush()
                return
            time.sleep(0.05)


def run_command_launched(command: str, argv: list[str], nproc: int, log_dir: str) -> int:
    """Run `pangu <command> <argv>` on `nproc` processes under paddle.distributed.launch; return its exit code.

    Rank 0's stdout / stderr are copied to this process's; SIGTERM / SIGINT here are passed to rank 0 as
    SIGTERM (a server shuts down and tells the other ranks to stop; a second signal goes to the launcher,
    which stops every rank)."""
    os.makedirs(log_dir, exist_ok=True)
    paths = {env: os.path.join(log_dir, name) for env, name in
             ((RANK0_OUT_ENV, "rank0.stdout"), (RANK0_ERR_ENV, "rank0.stderr"), (RANK0_PID_ENV, "rank0.pid"))}
    for path in paths.values():
        if os.path.exists(path):
            os.remove(path)
    cmd = launch_command([command, *argv], nproc, log_dir, COMMAND_WORKER)
    print(f"pangu {command}: launching {nproc} tensor-parallel processes; logs in {log_dir}/ (workerlog.N, "
          f"launcher.log)", file=sys.stderr, flush=True)
    stop = threading.Event()
    copiers = [threading.Thread(target=_copy_raw, args=(paths[env], sink, stop, env == RANK0_ERR_ENV), daemon=True)
               for env, sink in ((RANK0_OUT_ENV, sys.stdout.buffer), (RANK0_ERR_ENV, sys.stderr.buffer))]
    sys.stdout.flush()
    sys.stderr.flush()
    for t in copiers:
        t.start()
    with open(os.path.join(log_dir, "launcher.log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **paths})
        signalled = []

        def forward(signum, _frame):
            target = proc.pid
            if not signalled:
                try:
                    with open(paths[RANK0_PID_ENV]) as f:
                        target = int(f.read().strip() or proc.pid)
                except (OSError, ValueError):
                    pass
            signalled.append(signum)
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    stop.set()
    for t in copiers:
        t.join(timeout=5)
    launcher_log = os.path.join(log_dir, "launcher.log")
    try:
        with open(launcher_log, errors="replace") as f:
            failed = _FAILED.findall(f.read())
    except OSError:
        failed = []
    if code != 0 and [(r, c) for r, c, _ in failed] == [("0", "2")]:
        return 2  # rank 0 refused the input: its one `pangu <command>: error:` line is already on stderr
    if code != 0:
        for r in range(1, nproc):
            tail = _tail(os.path.join(log_dir, f"workerlog.{r}"), 10)
            if tail:
                print(f"---- last lines of {os.path.join(log_dir, f'workerlog.{r}')} ----\n{tail}", file=sys.stderr)
        for line in failed_ranks(os.path.join(log_dir, "launcher.log")):
            print(f"pangu {command}: error: {line}", file=sys.stderr)
    return code


def launch_for(command: str, argv: list[str], nproc: int, log_dir: str | None = None) -> int:
    """`pangu <command> --nproc N` in the launching process: re-run the command's own arguments `argv`
    (`paddle_pangu.cli.ARGV`; the launch flags are dropped) on N processes. Logs go to `log_dir`
    (default: a new temporary directory, named on the console)."""
    import tempfile

    argv = strip_launch_flags(argv[1:] if argv and argv[0] == command else argv)
    log_dir = log_dir or tempfile.mkdtemp(prefix=f"pangu-{command}-")
    return run_command_launched(command, argv, nproc, log_dir)
