"""Run a worker script on N CPU processes with `paddle.distributed.launch`.

Test side::

    from launch_utils import launch   # tests in tests/distributed (pytest adds the dir to sys.path)
    # elsewhere, with `python -m pytest` from the repo root: from tests.distributed.launch_utils import launch
    run = launch(WORKER, nproc=2, args=["--case", "mp2"], timeout=240)
    outs = run.outputs()          # one dict per rank, from write_output()
    assert run.logs[0] ...        # full worker log text per rank

Worker side (the script is started as a file, so import by path)::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from launch_utils import write_output
    write_output({"loss": 1.5, "grad": np.ndarray})   # written per rank

`launch` raises `DistributedRunError` with the tail of every rank's log
(and the launcher's own output) when the run fails or times out, so a
failing test shows why each process died. Exactly two failures are retried,
once each, and every retry is reported as a `LaunchRetryWarning` (listed in
pytest's warnings summary) and counted in `LaunchResult.retries`:

* "Address already in use": another job took the master port between the
  launcher's pick and its bind (nothing ran yet);
* the known paddle 3.3.1 gloo teardown abort: a worker died by SIGABRT /
  SIGSEGV *after every rank wrote its complete output* (workers leave with
  `exit_worker`, so this should no longer happen at all). A crash before a
  rank wrote its output is never retried: it fails the test, whatever the
  signal, since it may be a real bug in the gloo adapter.

Each worker gets OMP/MKL threads = 1 so that N processes fit on 2 cores.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

OUTPUT_DIR_ENV = "PANGU_TEST_OUTPUT_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
_NOISE = ("Warning", "warnings.warn", "warning_message", "ccache")


class DistributedRunError(AssertionError):
    """A multi-process run exited non-zero or timed out."""


class LaunchRetryWarning(RuntimeWarning):
    """A launch was retried (port clash, or a teardown abort after complete outputs)."""


@dataclasses.dataclass
class LaunchResult:
    """Logs and outputs of a finished multi-process run."""

    returncode: int
    logs: list[str]          # full text of workerlog.<rank>, rank order
    launcher_output: str     # stdout + stderr of paddle.distributed.launch
    log_dir: str             # removed after a successful run unless keep_logs
    output_dir: str
    rank_outputs: list = dataclasses.field(default_factory=list)  # write_output() objects, None if absent
    retries: int = 0         # how many times this run was relaunched (see the module docstring)

    def outputs(self) -> list:
        """The object each rank passed to `write_output`, in rank order."""
        for rank, obj in enumerate(self.rank_outputs):
            if obj is None:
                raise DistributedRunError(f"rank {rank} wrote no output\n{_tail(self.logs[rank])}")
        return list(self.rank_outputs)


def write_output(obj) -> None:
    """Worker side: save `obj` (picklable, e.g. numpy arrays) for this rank."""
    out_dir = os.environ.get(OUTPUT_DIR_ENV)
    if not out_dir:
        raise RuntimeError(f"{OUTPUT_DIR_ENV} is not set: run this worker through launch_utils.launch")
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(obj, f)


def exit_worker(code: int = 0) -> None:
    """Worker side: leave without running C++ destructors once outputs are written. paddle 3.3.1's gloo
    process groups sometimes abort (SIGABRT) while tearing down after a complete, correct run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _crashed(result: "LaunchResult") -> bool:
    """A worker died by SIGABRT / SIGSEGV (not an assertion, not our timeout)."""
    return any(f"Exit code {sig}" in result.launcher_output for sig in (-6, -11))


def teardown_abort(result: "LaunchResult") -> bool:
    """The known gloo teardown crash: killed by a signal although every rank had written its output."""
    return result.returncode != 0 and _crashed(result) and all(o is not None for o in result.rank_outputs)


def report_retry(script, reason: str, log_dir: str) -> None:
    """Say (stderr and a LaunchRetryWarning in pytest's summary) that a launch is being retried."""
    message = f"[launch_utils] retrying {Path(script).name} once: {reason} (first attempt's logs: {log_dir})"
    print(message, file=sys.stderr)
    warnings.warn(message, LaunchRetryWarning, stacklevel=3)


def _tail(text: str, lines: int = 40) -> str:
    kept = [line for line in text.splitlines() if line.strip() and not any(n in line for n in _NOISE)]
    return "\n".join(kept[-lines:])


def _read_outputs(output_dir: str, nproc: int) -> list:
    outputs = []
    for rank in range(nproc):
        path = os.path.join(output_dir, f"rank{rank}.pkl")
        if os.path.exists(path):
            with open(path, "rb") as f:
                outputs.append(pickle.load(f))
        else:
            outputs.append(None)
    return outputs


def _read_logs(log_dir: str, nproc: int) -> list[str]:
    logs = []
    for rank in range(nproc):
        path = os.path.join(log_dir, f"workerlog.{rank}")
        logs.append(Path(path).read_text(errors="replace") if os.path.exists(path) else "")
    return logs


def _worker_env(output_dir: str, extra: dict | None) -> dict:
    env = dict(os.environ)
    prefixes = ("PADDLE_", "FLAGS_selected", "PANGU_TEST_", "CUDA_VISIBLE_DEVICES")
    for key in [k for k in env if k.startswith(prefixes)]:
        del env[key]  # never inherit a parent launch's rank/endpoint/device settings
    env.update({
        OUTPUT_DIR_ENV: output_dir,
        "PADDLE_DISTRI_BACKEND": "gloo",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])),
    })
    env.update(extra or {})
    return env


def _run_once(script, nproc, args, timeout, env) -> LaunchResult:
    log_dir = tempfile.mkdtemp(prefix="pangu_launch_log_")
    output_dir = tempfile.mkdtemp(prefix="pangu_launch_out_")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", log_dir, str(script), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_worker_env(output_dir, env), cwd=str(REPO_ROOT), start_new_session=True)
    try:
        launcher_output, _ = proc.communicate(timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the workers it started
        launcher_output, _ = proc.communicate()
        returncode = -9
        launcher_output += f"\n[launch_utils] TIMEOUT after {timeout}s"
    return LaunchResult(returncode, _read_logs(log_dir, nproc), launcher_output or "", log_dir, output_dir,
                        _read_outputs(output_dir, nproc))


def _failure_report(script, result: LaunchResult) -> str:
    parts = [f"{Path(script).name} failed (launcher exit code {result.returncode}); logs in {result.log_dir}"]
    for rank, log in enumerate(result.logs):
        parts.append(f"----- rank {rank} (last lines) -----\n{_tail(log)}")
    parts.append(f"----- launcher -----\n{_tail(result.launcher_output, 15)}")
    return "\n".join(parts)


def launch(script, nproc: int = 2, args=(), timeout: float = 300, env: dict | None = None,
           keep_logs: bool = False, retry_on_crash: bool = True) -> LaunchResult:
    """Run `script` on `nproc` CPU processes and return logs and outputs.

    Args:
        script: path of the worker script.
        nproc: number of processes (`--nproc_per_node`).
        args: extra command-line arguments for the script.
        timeout: seconds before the whole process group is killed.
        env: extra environment variables for the workers.
        keep_logs: keep the temporary log/output directories after success
            (they are always kept after a failure, for inspection).
        retry_on_crash: relaunch once after the known gloo teardown abort, i.e.
            a worker killed by a signal after every rank wrote its output.
            Only for stateless scripts: a retry must not see the first
            attempt's files.

    Raises:
        DistributedRunError: non-zero exit or timeout, with every rank's log tail.
    """
    result = _run_once(script, nproc, args, timeout, env)
    port_clash = "Address already in use" in "".join(result.logs) + result.launcher_output
    if result.returncode != 0 and (port_clash or (retry_on_crash and teardown_abort(result))):
        report_retry(script, "master port clash" if port_clash else
                     "gloo teardown abort after every rank wrote its output", result.log_dir)
        result = dataclasses.replace(_run_once(script, nproc, args, timeout, env), retries=1)
    if result.returncode != 0:
        raise DistributedRunError(_failure_report(script, result))
    if not keep_logs:
        _remove_dirs(result)
    return result


def _remove_dirs(result: LaunchResult) -> None:
    shutil.rmtree(result.log_dir, ignore_errors=True)
    shutil.rmtree(result.output_dir, ignore_errors=True)
