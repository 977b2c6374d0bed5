"""Many kills: SIGKILL a real `pangu train` at random points (half of them mid-save) >= 20 times.

`kill_driver.py` (a fresh process) trains the tiny preset once straight through and
once under repeated SIGKILLs, forking each training process from pre-imported
modules so 20+ restarts fit in well under a minute (22 s measured at load 2.7).
Every restart must resume from the newest sealed checkpoint that existed when it
started (never skipping a corrupt one: a kill can leave a partial save, never a
damaged sealed checkpoint), and the final weights and every step's loss must equal
the uninterrupted run's exactly (dropout on: the RNG states are restored too).
"""
import json
import os
import re
import subprocess
import sys

import numpy as np

from paddle_pangu.io.safe_load import load_pdparams

MAX_STEPS = 100  # kill_driver.MAX_STEPS
# the npu test: 2 kills (one random, one mid-save) land within the first few steps and a resume can only
# start from a sealed checkpoint before them, so 20 steps cover every phase with 1/5 of the training
NPU_STEPS = 20

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_driver.py")
KILLS = 20


def _run_driver(root, kills=KILLS, device="cpu", extra_env=None, extra_args=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PANGU_NO_RUNTIME_TUNING": "1",
           **(extra_env or {})}
    proc = subprocess.run([sys.executable, DRIVER, str(root), str(kills), "7", "400", device, *extra_args],
                          capture_output=True,
                          text=True, timeout=480, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _last_losses(out):
    losses = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if m["type"] == "train":
                losses[m["step"]] = m["loss"]  # a replayed step overwrites: the last one counts
    return losses


def test_many_kills_resume_from_verified_checkpoints_to_the_same_weights(tmp_path):
    _check(_run_driver(tmp_path), tmp_path, KILLS, min_progress=15)


def test_kills_on_the_simulated_npu_resume_bit_exact(tmp_path):
    """The same machinery on `--device npu` (README "Devices"): two kills (one mid-save), resume: auto,
    every step's loss and the final weights equal the uninterrupted npu run's exactly. Hidden dropout on
    (drawn from the CPU generator by Paddle's fallback kernels: restored since this test found it was not);
    attention dropout off: the plugin's flash_attention_npu test op draws its dropout from a counter of its
    own, not from Paddle's npu generator, so no checkpoint can restore it (reported, not yet fixed)."""
    report = _run_driver(tmp_path, kills=2, device="npu", extra_env={"PANGU_TEST_NPU": "1"},
                         extra_args=("0.0", str(NPU_STEPS)))
    _check(report, tmp_path, 2, min_progress=1, max_steps=NPU_STEPS)
    for log in ("straight.log", "killed.000.log"):
        with open(tmp_path / log, errors="replace") as f:
            assert "topology: rank 0/1 on npu" in f.read(), log


def _check(report, tmp_path, kills, min_progress, max_steps=MAX_STEPS):
    lives = report["lives"]
    killed = [life for life in lives if life.get("killed")]
    assert len(killed) >= kills and sum(life["mid_save"] for life in killed) >= kills // 3, lives
    assert report["reference"]["exit"] == 0 and lives[-1]["mode"] == "finish" and lives[-1]["exit"] == 0, lives
    assert not any(life.get("timeout") for life in lives)
    assert max(life["expect_resume"] for life in lives) >= min_progress  # the run made progress through the kills
    for i, life in enumerate(lives):
        with open(tmp_path / f"killed.{i:03d}.log", errors="replace") as f:
            log = f.read()
        assert "skipping checkpoint" not in log and "no checkpoint verified" not in log, log[-2000:]
        resumed = re.findall(r"resumed from \S*step_(\d{8}) at step (\d+)", log)
        if life["expect_resume"]:
            assert resumed == [(f"{life['expect_resume']:08d}", str(life["expect_resume"]))], (i, life, resumed)
        else:
            assert not resumed
    straight, again = _last_losses(tmp_path / "straight"), _last_losses(tmp_path / "killed")
    assert sorted(again) == sorted(straight) == list(range(1, max_steps + 1))
    assert [again[s] for s in sorted(again)] == [straight[s] for s in sorted(straight)]
    wa = load_pdparams(str(tmp_path / "straight" / "final_model" / "model_state.pdparams"))
    wb = load_pdparams(str(tmp_path / "killed" / "final_model" / "model_state.pdparams"))
    assert sorted(wa) == sorted(wb) and len(wa) > 10
    for name in wa:
        np.testing.assert_array_equal(wb[name], wa[name], err_msg=name)
