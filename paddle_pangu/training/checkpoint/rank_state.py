"""What one rank writes into and reads from its `rank_NNNNN/` directory.

    model.safetensors       the model's state_dict (this rank's shard)
    optimizer.safetensors   the optimizer's tensors, under structured parameter names
    state.json              step, data position, LR scheduler, loss scaler, every RNG and
                            the optimizer's non-tensor skeleton (tagged JSON, state_codec)
    MANIFEST.json           sizes and hashes of the three files above, written last
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import paddle

from paddle_pangu.errors import CheckpointError

from .files import atomic_write, atomic_write_text, read_json
from .state_codec import from_json, join_tensors, split_tensors, to_json

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


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


def capture_rng_state() -> dict:
    """Every RNG a step can draw from (dropout in mp regions uses fleet's tracker)."""
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    state = {
        "paddle": paddle.get_rng_state(),
        "tracker": get_rng_state_tracker().get_states_tracker(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if not paddle.get_device().startswith("cpu"):
        # on a custom device `get_rng_state()` is that device's generators, but an op without a device
        # kernel runs Paddle's CPU kernel, which draws from the CPU generator (dropout on the simulated
        # npu: resume replayed different dropout masks until this was saved too)
        state["paddle_cpu"] = paddle.get_rng_state("cpu")
    return state


def restore_rng_state(state: dict) -> None:
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    paddle.set_rng_state(list(state["paddle"]))
    if state.get("paddle_cpu") is not None:
        paddle.set_rng_state(list(state["paddle_cpu"]), "cpu")
    if state.get("tracker"):
        get_rng_state_tracker().set_states_tracker(state["tracker"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_tensors(path: str, tensors: dict) -> None:
    from safetensors.paddle import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() if hasattr(v, "contiguous") else v
                                              for k, v in tensors.items()}, tmp))


def _load_tensors(path: str) -> dict:
    from safetensors.paddle import load_file

    # safetensors builds its CPU tensors with frombuffer + a dtype view, a stride kernel: the NPU
    # environment turns stride kernels off (FLAGS_use_stride_kernel=0, devices.NPU_ENV_DEFAULTS), and
    # every resume on `npu` failed ("kernel `view_dtype` is not registered"); on only for the load
    stride = paddle.get_flags(["FLAGS_use_stride_kernel"])["FLAGS_use_stride_kernel"]
    try:
        paddle.set_flags({"FLAGS_use_stride_kernel": True})
        return load_file(path)
    except Exception as exc:  # a header that verified but does not parse: still a checkpoint problem
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc)[:160]})") from None
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": stride})


def write_rank_files(rank_dir: str, model, optimizer, state: dict) -> None:
    """The model, optimizer and JSON state of this rank, each written atomically."""
    model_sd = model.state_dict()
    bad = [k for k, v in model_sd.items() if not isinstance(v, paddle.Tensor)]
    if bad:
        raise CheckpointError(f"model state entries that are not tensors: {bad[:5]}")
    _save_tensors(os.path.join(rank_dir, MODEL_FILE), dict(model_sd))
    opt_state = optimizer.state_dict()
    opt_state = rename_optimizer_state(opt_state, {**_unique_to_structured(model), **_master_names(opt_state, model)})
    skeleton, opt_tensors = split_tensors(opt_state)
    _save_tensors(os.path.join(rank_dir, OPTIMIZER_FILE), opt_tensors)
    doc = {**{k: to_json(v) for k, v in state.items()}, "optimizer": skeleton}
    atomic_write_text(os.path.join(rank_dir, STATE_FILE), json.dumps(doc))


def decode_state(path: str) -> dict:
    """A rank's decoded state.json (step, scheduler, scaler, rng, optimizer skeleton); CheckpointError naming
    the file when it is unreadable or does not decode."""
    doc = read_json(path, "checkpoint state")
    try:
        return from_json(doc)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint state does not decode ({str(exc)[:160]})") from None


def read_rank_files(rank_dir: str, model, optimizer) -> dict:
    """Load model and optimizer state from a verified rank dir; returns the decoded JSON state."""
    path = os.path.join(rank_dir, STATE_FILE)
    state = decode_state(path)
    model.set_state_dict(_load_tensors(os.path.join(rank_dir, MODEL_FILE)))
    opt_tensors = _load_tensors(os.path.join(rank_dir, OPTIMIZER_FILE))
    apply_optimizer_state(model, optimizer, join_tensors(state.pop("optimizer"), opt_tensors, path))
    return state


def apply_optimizer_state(model, optimizer, opt_state: dict) -> None:
    """Load an optimizer state keyed by structured parameter names (as stored) into `optimizer`."""
    structured_to_unique = {v: k for k, v in _unique_to_structured(model).items()}
    opt_state = rename_optimizer_state(opt_state, structured_to_unique)
    for unique, master in opt_state.get("master_weights", {}).items():
        # the loaded master is a new tensor: give it the name its moments are stored under
        master.name = unique + MASTER
    opt_state = rename_optimizer_state(opt_state, {structured + MASTER: structured_to_unique[structured] + MASTER
                                                   for structured in structured_to_unique})
    optimizer.set_state_dict(opt_state)


MASTER = ".fp32_master"  # structured name suffix of an fp32 master weight (AMP O2, multi_precision)


def _master_names(opt_state: dict, model) -> dict:
    """{master weight's unique name: `<structured param name>.fp32_master`}.

    With master weights (AMP O2), AdamW keys the moments by the *master* tensor's name
    (`eager_tmp_5_moment1_0`), a process-global unique name that a resuming process does not
    reproduce; an O2 resume failed with "eager_tmp_0_moment1_0 should in state dict".
    """
    structured = _unique_to_structured(model)
    return {master.name: structured[unique] + MASTER
            for unique, master in opt_state.get("master_weights", {}).items() if unique in structured}
