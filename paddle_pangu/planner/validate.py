"""Planner vs measurement: short real CPU trainings, each process measured (see `measure.py`).

`CASES` are small layouts of the `mini` model that run on 1-2 CPU processes of this machine.
`run_case` launches one (a plain process for world size 1, `paddle.distributed.launch` otherwise)
and returns every rank's measurement; `compare` puts them beside the planner's terms for the same
layout on the measured `cpu` device preset (fp32: no autocast on CPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


# name -> (model overrides, parallel section, seq_len); the model is the `mini` preset
BASE_PARALLEL = {"micro_batch_size": 4, "accumulate_steps": 1}
CASES: dict[str, dict] = {
    "single": {"parallel": {}},
    "single_recompute": {"parallel": {"recompute_interval": 1}},
    "dp2": {"parallel": {"dp_degree": 2}},
    "mp2": {"parallel": {"mp_degree": 2}},
    "mp2_recompute": {"parallel": {"mp_degree": 2, "recompute_interval": 1}},
    "pp2_mb4": {"parallel": {"pp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 4}},
    "sharding2_stage1": {"parallel": {"sharding_degree": 2, "sharding_stage": 1}},
    "sharding2_stage2": {"parallel": {"sharding_degree": 2, "sharding_stage": 2}},
}
QUICK_CASES = ("single", "mp2")  # the test suite's small version


def run_config_for(case: str, preset: str = "mini", seq_len: int = 128, output_dir: str | None = None) -> dict:
    """The RunConfig dict of one validation case (synthetic tokens, fp32 CPU, no logging files)."""
    spec = CASES[case]
    parallel = {**BASE_PARALLEL, **spec["parallel"]}
    return {
        "model": {"preset": preset, "overrides": dict(spec.get("model", {}))},
        "data": {"seq_len": seq_len, "synthetic": {"num_samples": 64}},
        "parallel": parallel,
        "train": {"max_steps": 100, "device": "cpu", "output_dir": output_dir or tempfile.mkdtemp(prefix="pangu_val_")},
        "optim": {"warmup_steps": 1},
        "logging": {"visualdl": False, "progress_bar": False, "log_interval": 1000},
        "checkpoint": {"save_final_model": False},
    }


def world_size_of(run_config: dict) -> int:
    p = {**BASE_PARALLEL, **run_config["parallel"]}
    return p.get("dp_degree", 1) * p.get("mp_degree", 1) * p.get("pp_degree", 1) * p.get("sharding_degree", 1)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_selected", "PANGU_TEST_"))}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PADDLE_DISTRI_BACKEND": "gloo"})
    return env


def run_case(run_config: dict, steps: int = 3, timeout: float = 900) -> list[dict]:
    """Train `steps` steps of `run_config` on its world size; one measurement dict per rank."""
    world = world_size_of(run_config)
    out = tempfile.mkdtemp(prefix="pangu_measure_")
    worker = importlib.util.find_spec("paddle_pangu.planner.entry.measure_worker").origin  # not executed
    script = [worker, "--run-config", json.dumps(run_config), "--steps", str(steps), "--out", out]
    if world == 1:
        cmd = [sys.executable, *script]
    else:
        log_dir = tempfile.mkdtemp(prefix="pangu_measure_log_")
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(world), "--log_dir", log_dir,
               *script]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    results = [Path(out, f"rank{r}.json") for r in range(world)]
    if proc.returncode != 0 or not all(p.exists() for p in results):
        logs = "" if world == 1 else "\n".join(p.read_text(errors="replace")[-3000:] for p in Path(log_dir).glob("workerlog.*"))
        raise RuntimeError(f"measurement run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}\n{logs}")
    return [json.loads(p.read_text()) for p in results]


def planner_inputs(run_config: dict):
    """(PanGuConfig, ParallelConfig, Hardware) the planner sees for a validation run (cpu preset, fp32)."""
    from ..training.run_config import run_config_from_dict
    from .estimate import Hardware
    from .hardware import get_device_preset

    model_cfg, par = run_config_from_dict(run_config, source="validate").validate()  # par carries seq_len
    return model_cfg, par, Hardware.from_preset(get_device_preset("cpu"), par.world_size, "float32")


def compare(case: str, run_config: dict, measured: list[dict]) -> list[dict]:
    """One row per rank: predicted and measured bytes by term, step seconds, relative error of the peak."""
    from .estimate import memory_terms, step_seconds

    model_cfg, par, hw = planner_inputs(run_config)
    predicted_step = step_seconds(model_cfg, par, hw)
    rows = []
    for m in measured:
        stage, shard = m.get("pp_rank", 0), m.get("sharding_rank", 0)
        t = memory_terms(model_cfg, par, hw, stage=stage, shard_rank=shard)
        pred_total = sum(t.values())
        rows.append({
            "case": case, "rank": m["rank"], "stage": stage,
            "pred": {**t, "persistent": t["weights"] + t["gradients"] + t["optimizer"] + t["buffers"], "peak": pred_total},
            "meas": {"weights": m["weights"], "gradients": m["gradients"], "optimizer": m["optimizer"],
                     "persistent": m["persistent"], "activations": m["peak"] - m["persistent"], "peak": m["peak"],
                     "rss_peak_delta": m["rss_peak_delta"]},
            "error": pred_total / m["peak"] - 1.0,
            "step_pred": predicted_step, "step_cpu": m["step_cpu"], "step_wall": m["step_wall"],
        })
    return rows
