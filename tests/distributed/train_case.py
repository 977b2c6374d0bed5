"""Shared set-up for the training parity / resume tests: tiny run YAMLs and their results.

Every run trains the same tiny PanGu (4 layers so pp=2 splits evenly, no
dropout unless asked) from the same initial weights file on the same
synthetic token samples; only the parallel layout differs. Runs go through
the real entry point (`tools/train.py`), alone or under
`paddle.distributed.launch` (launch_utils), and are read back from what the
trainer writes: `metrics.jsonl` and `final_model/model_state.pdparams`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from launch_utils import (  # tests/distributed is on sys.path
    REPO_ROOT, DistributedRunError, _worker_env, launch, report_retry,
)

# gloo's rendezvous gives up after 30 s; with 4 processes on 2 busy cores a slow rank can miss it
# while fleet creates its groups. Such a run never reached training (no metrics.jsonl): it is started
# once more, and the retry is reported (launch_utils.report_retry). A signal alone (SIGABRT / SIGSEGV
# without one of these gloo rendezvous messages) is never retried: it may be a real adapter bug.
_RENDEZVOUS_FLAKES = ("unbound_buffer.cc", "TCP connection reset by peer")

TRAIN_PY = REPO_ROOT / "tools" / "train.py"
# tools/train.py plus a recorder of each step's final (synchronised, unclipped) gradients
CAPTURE_PY = REPO_ROOT / "tests" / "distributed" / "train_capture.py"
MODEL_OVERRIDES = {"num_layers": 4, "max_position_embeddings": 32,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def make_initial_weights(path: str, overrides: dict | None = None, seed: int = 11) -> str:
    """Save a plain PanGuForCausalLM state dict every run starts from."""
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(seed)
    model = PanGuForCausalLM(get_preset("tiny", **{**MODEL_OVERRIDES, **(overrides or {})}))
    paddle.save(model.state_dict(), path)
    return path


def write_config(path: str, init: str, out_dir: str, parallel: dict, max_steps: int = 4,
                 model_overrides: dict | None = None, **sections) -> str:
    """A run YAML: tiny model from `init`, synthetic data, seq 32, global batch 4."""
    cfg = {
        "model": {"preset": "tiny", "overrides": {**MODEL_OVERRIDES, **(model_overrides or {})}, "init_from": init},
        "data": {"seq_len": 32, "synthetic": {"num_samples": 64, "vocab_size": 2000, "eod_every": 13}},
        "optim": {"lr": 2.0e-3, "min_lr": 2.0e-4, "warmup_steps": 1},
        "parallel": parallel,
        # device cpu: these runs test the CPU gloo backend, on a GPU / NPU machine too
        "train": {"max_steps": max_steps, "seed": 7, "output_dir": out_dir, "eval_iters": 1, "device": "cpu"},
        "checkpoint": {"save_interval": 0, "keep_last": 2},
        "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    return path


def run_single(config: str, extra_args=(), timeout: float = 300, script=TRAIN_PY, env: dict | None = None) -> None:
    """One process, no launcher (the reference run)."""
    env = _worker_env(os.path.dirname(config), env)
    proc = subprocess.run([sys.executable, str(script), "--config", config, *extra_args], env=env,
                          cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"single-process run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def run_launch(config: str, nproc: int, extra_args=(), timeout: float = 300, script=TRAIN_PY, env: dict | None = None):
    """`tools/train.py` under paddle.distributed.launch; one retry for a rendezvous time-out only."""
    args = ["--config", config, *extra_args]
    try:
        return launch(script, nproc=nproc, args=args, timeout=timeout, retry_on_crash=False, env=env)
    except DistributedRunError as exc:
        with open(config, encoding="utf-8") as f:
            out_dir = yaml.safe_load(f)["train"]["output_dir"]
        if os.path.exists(os.path.join(out_dir, "metrics.jsonl")) or not any(f in str(exc) for f in _RENDEZVOUS_FLAKES):
            raise  # it trained (not a set-up flake), or a real failure
        report_retry(script, "gloo rendezvous timed out before any training step", "(see the report above)")
        return launch(script, nproc=nproc, args=args, timeout=timeout, retry_on_crash=False, env=env)


def read_metrics(out_dir: str, kind: str = "train") -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["type"] == kind]


def read_final_weights(out_dir: str) -> dict:
    import paddle

    state = paddle.load(os.path.join(out_dir, "final_model", "model_state.pdparams"))
    return {k: v.numpy() for k, v in state.items()}


def read_gradients(out_dir: str) -> dict:
    """{step: {plain name: gradient}} recorded by train_capture.py.

    Per (pp stage, mp rank) the data-parallel / sharding ranks' gradients of
    their own mean losses are averaged (what the dp all-reduce and the
    sharding reduce compute, each rank holding an equal share of the global
    batch), then the mp shards are merged like the final model.
    """
    import glob
    import pickle

    import numpy as np

    from paddle_pangu.model.weight_tables import merge_state_dicts

    records = []
    for path in sorted(glob.glob(os.path.join(out_dir, "grads", "rank*.pkl"))):
        with open(path, "rb") as f:
            records.append(pickle.load(f))
    if not records:
        raise AssertionError(f"{out_dir}: no gradients recorded (run through train_capture.py)")
    full: dict = {}
    for step in sorted(records[0]["steps"]):
        merged: dict = {}
        for stage in sorted({r["pp_rank"] for r in records}):
            shards = []
            for mp_rank in sorted({r["mp_rank"] for r in records}):
                group = [r["steps"][step] for r in records if r["pp_rank"] == stage and r["mp_rank"] == mp_rank]
                shards.append({k: np.mean([g[k] for g in group], axis=0, dtype=np.float64).astype(np.float32)
                               for k in group[0]})
            for name, value in merge_state_dicts(shards).items():
                merged.setdefault(name, value)  # the tied embedding is on the first and the last stage
        full[step] = merged
    return full
