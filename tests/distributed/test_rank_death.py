"""A 2-process `pangu train --nproc 2` in which rank 1 dies (SIGKILL) mid-training.

The job must end with a non-zero exit (paddle's launcher stops the pod; ~2 s on
a quiet machine, so the time-out below only guards against a hang and is not a
speed assertion), and the console must name the rank that died, its signal and
its log file on one `pangu train: error:` line. The victim is found among the
job's own descendants (psutil: children of the launcher, rank from the
environment the launcher gave it), not by scanning every process.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytestmark = pytest.mark.distributed

CONFIG = {
    "model": {"preset": "tiny", "overrides": {"num_layers": 2, "vocab_size": 512, "max_position_embeddings": 16}},
    "data": {"seq_len": 16, "synthetic": {"num_samples": 64}},
    "optim": {"lr": 3.0e-3, "warmup_steps": 1},
    "parallel": {"micro_batch_size": 2, "dp_degree": 2},
    "train": {"max_steps": 1000000, "seed": 3, "eval_iters": 1},
    "checkpoint": {"save_interval": 0, "save_final_model": False},
    "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
}
HANG_GUARD_S = 600  # a job still alive this long after the kill is hung (the failure this test exists for)


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of the training worker of `rank` under the launcher process `root`."""
    import psutil

    for child in psutil.Process(root).children(recursive=True):
        try:
            if (child.environ().get("PADDLE_TRAINER_ID") == str(rank)
                    and any("train_worker" in part for part in child.cmdline())):
                return child.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_dead_rank_stops_the_job_and_is_named(tmp_path):
    cfg = dict(CONFIG, train=dict(CONFIG["train"], output_dir=str(tmp_path / "out")))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    worker0 = tmp_path / "out" / "launch_logs" / "workerlog.0"
    proc = subprocess.Popen([sys.executable, "-m", "paddle_pangu.cli", "train", "--config", str(path), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        start = time.time()
        while time.time() - start < 300:  # both ranks are training: rank 0 has logged a step
            if worker0.exists() and "step 2/" in worker0.read_text(errors="replace"):
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("the job did not start training within 300 s")
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        try:
            out, _ = proc.communicate(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job was still running {HANG_GUARD_S} s after rank 1 was killed (hung)")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    lines = [l for l in out.splitlines() if l.startswith("pangu train: error:")]
    # The launcher names the first failure it sees: usually rank 1's SIGKILL, but rank 0 can abort first
    # (gloo IoException "connection reset by peer" -> SIGABRT) and then only rank 0 is reported. Both name a
    # dead rank and its own log; telling the victim from the peer it took down is still open (issue 13 note).
    logs = {r: str(tmp_path / "out" / "launch_logs" / f"workerlog.{r}") for r in (0, 1)}
    assert any(("rank 1 was killed by SIGKILL" in l and logs[1] in l) or
               ("rank 0 was killed by SIGABRT" in l and logs[0] in l) for l in lines), out[-3000:]
