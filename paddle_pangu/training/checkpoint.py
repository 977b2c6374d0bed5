"""Per-rank training checkpoints and resume.

Layout under `<output_dir>/checkpoints/`::

    step_00000100/
        rank_00000/  model.pdparams  optimizer.pdopt  state.pkl
        rank_00001/  ...
        run_config.json            (written by rank 0)
        COMPLETE                   (written by rank 0 after every rank finished)
    latest                         (text: the newest complete step dir name)

`state.pkl` holds the step, the data position (consumed samples: the data
order is a pure function of (seed, step, data rank), so the step is enough
to continue the same order), the LR scheduler, the AMP loss scaler and every
RNG (paddle, fleet's model-parallel tracker, numpy, python). Each rank saves
and loads only its own shard of the model and optimizer, so a resume must use
the same parallel layout; the consolidated model (`save_pretrained`) is the
layout-free export. Multi-node jobs need `output_dir` on a filesystem every
node sees (rank 0 writes the COMPLETE marker and `latest` for all ranks).
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import numpy as np
import paddle

CKPT_SUBDIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _unique_to_structured(model) -> dict:
    """{param.name (Paddle's process-global unique name): structured name in the model}."""
    return {p.name: n for n, p in model.named_parameters()}


def rename_optimizer_state(state: dict, mapping: dict) -> dict:
    """Rename optimizer-state keys from one parameter naming to the other.

    Paddle keys accumulators as `<param.name>_<accumulator>` (e.g.
    `linear_3.w_0_moment1_0`) and master weights by `param.name`; the unique
    names depend on how many layers the process built before, so checkpoints
    store structured names (`pangu.layers.0.mlp.fc_in.weight_moment1_0`) and
    map back to whatever this process called the parameters.
    """
    prefixes = sorted(mapping, key=len, reverse=True)  # longest first: "linear_11.w_0" before "linear_1.w_0"
    out = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, dict):
            out[key] = {mapping.get(k, k): v for k, v in value.items()}
            continue
        new_key = key
        for old in prefixes:
            if key == old or key.startswith(old + "_"):
                new_key = mapping[old] + key[len(old):]
                break
        out[new_key] = value
    return out


def _barrier():
    if paddle.distributed.get_world_size() > 1:
        paddle.distributed.barrier()


def capture_rng_state() -> dict:
    """Every RNG a step can draw from (dropout in mp regions uses fleet's tracker)."""
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    return {
        "paddle": paddle.get_rng_state(),
        "tracker": get_rng_state_tracker().get_states_tracker(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    paddle.set_rng_state(state["paddle"])
    if state.get("tracker"):
        get_rng_state_tracker().set_states_tracker(state["tracker"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(output_dir: str, step: int, model, optimizer, scheduler, scaler=None,
                    extra: dict | None = None, run_config: dict | None = None, keep_last: int = 2) -> str:
    """Save this rank's shard at `step`; rank 0 marks it complete and prunes old ones."""
    root = os.path.join(output_dir, CKPT_SUBDIR)
    step_dir = os.path.join(root, step_dir_name(step))
    rank = paddle.distributed.get_rank()
    rank_dir = os.path.join(step_dir, f"rank_{rank:05d}")
    os.makedirs(rank_dir, exist_ok=True)
    paddle.save(model.state_dict(), os.path.join(rank_dir, "model.pdparams"))
    opt_state = rename_optimizer_state(optimizer.state_dict(), _unique_to_structured(model))
    paddle.save(opt_state, os.path.join(rank_dir, "optimizer.pdopt"))
    state = {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "extra": extra or {},
    }
    with open(os.path.join(rank_dir, "state.pkl"), "wb") as f:
        pickle.dump(state, f)
    _barrier()
    if rank == 0:
        if run_config is not None:
            with open(os.path.join(step_dir, "run_config.json"), "w", encoding="utf-8") as f:
                json.dump(run_config, f, indent=2, default=str)
        with open(os.path.join(step_dir, COMPLETE), "w") as f:
            f.write(str(paddle.distributed.get_world_size()))
        with open(os.path.join(root, LATEST), "w") as f:
            f.write(step_dir_name(step))
        _prune(root, keep_last)
    _barrier()
    return step_dir


def _prune(root: str, keep_last: int) -> None:
    complete = sorted(d for d in os.listdir(root) if d.startswith("step_") and
                      os.path.isfile(os.path.join(root, d, COMPLETE)))
    for name in complete[:-keep_last]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def find_resume_dir(output_dir: str, resume: str) -> str | None:
    """`auto`: the latest complete checkpoint under output_dir (or None); `none`: None; else a path."""
    if resume in (None, "", "none"):
        return None
    if resume != "auto":
        if not os.path.isfile(os.path.join(resume, COMPLETE)):
            raise FileNotFoundError(f"checkpoint.resume={resume!r}: not a complete checkpoint directory "
                                    f"(no {COMPLETE} marker)")
        return resume
    latest = os.path.join(output_dir, CKPT_SUBDIR, LATEST)
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        step_dir = os.path.join(output_dir, CKPT_SUBDIR, f.read().strip())
    return step_dir if os.path.isfile(os.path.join(step_dir, COMPLETE)) else None


def load_checkpoint(step_dir: str, model, optimizer, scheduler, scaler=None) -> dict:
    """Load this rank's shard; returns the saved state (step, extra, ...) after restoring RNGs."""
    with open(os.path.join(step_dir, COMPLETE)) as f:
        saved_world = int(f.read().strip() or 0)
    world = paddle.distributed.get_world_size()
    if saved_world != world:
        raise ValueError(f"{step_dir}: saved by {saved_world} processes, resuming with {world}; "
                         "per-rank checkpoints need the same parallel layout (export and reshard instead)")
    rank_dir = os.path.join(step_dir, f"rank_{paddle.distributed.get_rank():05d}")
    model.set_state_dict(paddle.load(os.path.join(rank_dir, "model.pdparams")))
    structured_to_unique = {v: k for k, v in _unique_to_structured(model).items()}
    opt_state = paddle.load(os.path.join(rank_dir, "optimizer.pdopt"))
    optimizer.set_state_dict(rename_optimizer_state(opt_state, structured_to_unique))
    with open(os.path.join(rank_dir, "state.pkl"), "rb") as f:
        state = pickle.load(f)
    scheduler.set_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return state
