"""A 2-process `pangu train --nproc 2` in which rank 1 dies (SIGKILL) mid-training.

The job must end with a non-zero exit within a bounded time after the death
(measured ~2 s: paddle's launcher stops the pod), and the console must name the
rank that died and its log file on one `pangu train: error:` line.
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
AFTER_DEATH_LIMIT = 60.0  # seconds from the kill to the job's exit, generous for a loaded 2-core machine


def _descendants(root: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    for pid in _descendants(root):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"PADDLE_TRAINER_ID={rank}".encode() in env and any(b"train_worker" in a for a in _cmdline(pid)):
            return pid
    return None


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


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
        killed_at = time.time()
        out, _ = proc.communicate(timeout=AFTER_DEATH_LIMIT)
        took = time.time() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and took < AFTER_DEATH_LIMIT
    lines = [l for l in out.splitlines() if l.startswith("pangu train: error:")]
    # The launcher names the first failure it sees: usually rank 1's SIGKILL, but rank 0 can abort first
    # (gloo IoException "connection reset by peer" -> SIGABRT) and then only rank 0 is reported. Both name a
    # dead rank and its own log; telling the victim from the peer it took down is still open (issue 13 note).
    logs = {r: str(tmp_path / "out" / "launch_logs" / f"workerlog.{r}") for r in (0, 1)}
    assert any(("rank 1 was killed by SIGKILL" in l and logs[1] in l) or
               ("rank 0 was killed by SIGABRT" in l and logs[0] in l) for l in lines), out[-3000:]
