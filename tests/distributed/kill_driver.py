"""Driver of test_kill_resume: train, SIGKILL the trainer at random points (many of them mid-save), resume.

Run as a fresh process (`python kill_driver.py WORKDIR KILLS SEED [BUDGET_S [DEVICE [ATTENTION_DROPOUT]]]`): it imports the
project once and forks every training process from that state, so a restart costs
no interpreter start-up; the driver itself never runs a Paddle op (a forked child
of a process with live OpenMP threads could deadlock). Each life is a real
`pangu train` (cli.main) in a child process that is killed with SIGKILL either at
a random moment after its first step or the moment a checkpoint save is seen in
progress (a `*.partial` directory). Prints one JSON line with what happened.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time

import yaml

from paddle_pangu import runtime

runtime.apply(log=False)  # before paddle, as `pangu` does: under PANGU_TEST_NPU=1 the children have the npu device

import paddle.distributed.fleet.meta_parallel  # noqa: F401  (everything a child imports, once, before any fork)
import safetensors.paddle  # noqa: F401
import xxhash  # noqa: F401

import paddle_pangu.cli
import paddle_pangu.model.modeling_pp  # noqa: F401
import paddle_pangu.parallel.device  # noqa: F401
import paddle_pangu.parallel.topology  # noqa: F401
import paddle_pangu.training.trainer  # noqa: F401
from paddle_pangu.training.run_config import load_run_config

MAX_STEPS = int(sys.argv[7]) if len(sys.argv) > 7 else 100  # the npu test's 2 kills need far fewer
DEVICE = sys.argv[5] if len(sys.argv) > 5 else "cpu"  # npu: the simulated Ascend device (PANGU_TEST_NPU=1)
ATTENTION_DROPOUT = float(sys.argv[6]) if len(sys.argv) > 6 else None  # the preset's unless given
CONFIG = {
    "model": {"preset": "tiny", "overrides": {"num_layers": 2, "vocab_size": 512, "max_position_embeddings": 16}},
    "data": {"seq_len": 16, "synthetic": {"num_samples": 64}},
    "optim": {"lr": 3.0e-3, "warmup_steps": 2},
    "parallel": {"micro_batch_size": 2, "accumulate_steps": 1},
    # 100 steps: each life runs 1-3 new steps plus however many finish before the kill lands, so on a
    # fast, quiet machine 20 kills took more than 40 steps and the run ended first (seen in a fresh CI-like run)
    "train": {"max_steps": MAX_STEPS, "seed": 11, "eval_iters": 1},
    "checkpoint": {"save_interval": 1, "keep_last": 2, "resume": "auto"},
    "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
}


def _write_config(root: str, name: str) -> str:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["train"]["device"] = DEVICE
    if ATTENTION_DROPOUT is not None:
        cfg["model"]["overrides"]["attention_probs_dropout_prob"] = ATTENTION_DROPOUT
    cfg["train"]["output_dir"] = os.path.join(root, name)
    path = os.path.join(root, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def _spawn(cfg_path: str, log_path: str) -> int:
    pid = os.fork()
    if pid == 0:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = paddle_pangu.cli.main(["train", "--config", cfg_path])
        except BaseException:  # noqa: BLE001 - the child reports and exits, never returns into the driver
            import traceback

            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))
    return pid


def _steps_done(out: str) -> int:
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum(1 for line in f if '"train"' in line)
    except OSError:
        return 0


def _saving(ckpt_root: str) -> bool:
    try:
        return any(n.endswith(".partial") for n in os.listdir(ckpt_root))
    except OSError:
        return False


def _sealed_steps(ckpt_root: str) -> list[int]:
    try:
        return sorted(int(n[5:]) for n in os.listdir(ckpt_root) if re.fullmatch(r"step_\d{8}", n))
    except OSError:
        return []


def _life(cfg_path, out, log_path, rng, mode, deadline) -> dict:
    """One training process: killed after 1-3 new steps, at once when a save is seen in progress
    ('mid-save') or after a random delay ('random'); never killed with mode 'finish'."""
    start_steps, ckpt_root = _steps_done(out), os.path.join(out, "checkpoints")
    sealed = _sealed_steps(ckpt_root)
    life = {"mode": mode, "start_steps": start_steps, "expect_resume": sealed[-1] if sealed else 0}
    pid = _spawn(cfg_path, log_path)
    target, delay, reached = start_steps + rng.randint(1, 3), rng.uniform(0.0, 0.3), None
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {**life, "exit": os.waitstatus_to_exitcode(status), "killed": False}
        if mode != "finish":
            if reached is None and _steps_done(out) >= target:
                reached = time.time()
            saving = _saving(ckpt_root)
            if reached is not None and ((mode == "mid-save" and saving) or
                                        (mode == "random" and time.time() - reached > delay)):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {**life, "killed": True, "mid_save": saving or _saving(ckpt_root), "steps": _steps_done(out)}
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {**life, "timeout": True}


def main() -> None:
    root, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    budget = float(sys.argv[4]) if len(sys.argv) > 4 else 600.0
    deadline = time.time() + budget
    rng = random.Random(seed)
    t0 = time.time()
    load_run_config(_write_config(root, "warmup"), []).validate(1)  # imports the config/model modules, no ops
    ref = _life(_write_config(root, "straight"), os.path.join(root, "straight"), os.path.join(root, "straight.log"),
                rng, "finish", deadline)
    t_ref = time.time() - t0
    cfg, out = _write_config(root, "killed"), os.path.join(root, "killed")
    lives = []
    while sum(1 for life in lives if life.get("killed")) < kills and time.time() < deadline:
        log = os.path.join(root, f"killed.{len(lives):03d}.log")
        lives.append(_life(cfg, out, log, rng, "mid-save" if len(lives) % 2 else "random", deadline))
        if lives[-1].get("exit") is not None:
            break  # the run finished before enough kills: report it, the test fails on the count
    if lives and lives[-1].get("exit") is None:
        lives.append(_life(cfg, out, os.path.join(root, f"killed.{len(lives):03d}.log"), rng, "finish", deadline))
    print(json.dumps({"reference": ref, "reference_seconds": round(t_ref, 1), "lives": lives,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
