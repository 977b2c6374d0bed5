"""Gloo adapter that lets fleet's tensor / pipeline / sharding paths run on CPU.

Usage (only from topology set-up, nowhere else)::

    from paddle.distributed import fleet
    from paddle_pangu.parallel import cpu_backend

    cpu_backend.install()                      # BEFORE fleet.init (no-op off CPU)
    fleet.init(is_collective=True, strategy=strategy)
    cpu_backend.install(fleet.get_hybrid_communicate_group())  # later calls: no-op, True
    # ... now build the model (PipelineLayer reads ParallelEnv at construction)
    # and call fleet.distributed_model / fleet.distributed_optimizer.

Order: the first `install()` must run BEFORE `fleet.init`: with more than 2
processes fleet.init's group creation itself needs the adapter
(`groups.py`). Every later call is a no-op returning True. It must also run
before building any layer or wrapping the model. It returns False and does
nothing off CPU (GPU / NPU / custom device) or when the groups are not gloo
groups: on those devices fleet runs untouched.

Sharding on CPU: stage 1 = fleet's `DygraphShardingOptimizer`; stage 2 =
`hybrid_configs["sharding_configs"].split_param = True`
(`DygraphShardingOptimizerV2`); `group_sharded_parallel` is GPU-only
(`sharding.py`).

What it changes, all on paddle 3.3.1 (other versions are refused unless
`force=True`, because every patch targets a private paddle name):

* `ProcessGroupGloo` gains working `*_on_calc_stream` collectives and
  reduce-scatter / reduce emulated with all-reduce (`collectives.py`);
* `_c_identity`, `_mp_allreduce`, `_c_split`, `_c_concat` and
  `_c_softmax_with_cross_entropy` in `paddle.distributed.fleet.layers.mpu.mp_ops`
  and `paddle.distributed.collective` become PyLayers over gloo
  collectives (`mp_ops.py`); `c_embedding` already has a CPU kernel;
* pipeline p2p uses blocking-send order and whole-tensor sends;
  `ParallelEnv().device_id` falls back to 0 (`pipeline.py`);
* every gloo sub-group created by `paddle.distributed.new_group` runs its
  rendezvous on its own small TCP store, because paddle's shared,
  unprefixed rendezvous keys make fleet.init fail with > 2 processes;
  pipelines of > 2 stages also get a 2-rank group per adjacent stage pair
  that carries their send/recv, since gloo's per-process op tags only
  match inside 2-rank groups (`groups.py`);
* sharding stage 2 (`split_param`) gets CPU buffer alignment and an
  in-place `clear_grad` (`sharding.py`);
* `TensorParallel`'s input broadcast (`broadcast_input_data`, run by
  PaddleNLP's Trainer every step with tensor_parallel_degree > 1) accepts
  the CPU place (`inputs.py`).

Not covered on CPU (fleet options that stay off): `mp_configs`
`mp_async_allreduce` / `mp_fused_linear_param_grad_add` (they call
`_legacy_C_ops.c_identity` / fused CUDA ops directly), sequence
parallelism, `ParallelMultiLabelCrossEntropy`, GroupSharded stage 2/3.

Tests: tests/distributed/test_cpu_backend.py (mp2, pp2, pp4, mp2 x pp2,
dp2 x pp2, sharding stages 1 and 2, sharding2 x pp2, each collective)
against single-process references. `uninstall()` restores every patched
attribute (used by tests).
"""
from __future__ import annotations

import logging

import paddle
from paddle.base import core
from paddle.distributed import collective
from paddle.distributed.fleet.layers.mpu import mp_ops as fleet_mp_ops

from . import collectives, groups, inputs, pipeline, sharding
from .mp_ops import CpuMpOps, is_gloo_group
from paddle_pangu.errors import PanGuError

__all__ = ["install", "uninstall", "is_active", "backend_is_cpu_gloo", "CpuBackendError", "SUPPORTED_PADDLE_VERSIONS"]

logger = logging.getLogger(__name__)

# The adapter patches private paddle names; it was written and tested against these.
SUPPORTED_PADDLE_VERSIONS = ("3.3.1",)

_MISSING = object()
_saved: list[tuple[object, str, object]] = []  # (owner, attribute, original or _MISSING)


class CpuBackendError(PanGuError, RuntimeError):
    """The CPU gloo adapter cannot be installed in this environment."""


def is_active() -> bool:
    """True when `install()` has patched paddle in this process."""
    return bool(_saved)


def _check_version(force: bool) -> None:
    version = paddle.__version__
    if version in SUPPORTED_PADDLE_VERSIONS:
        return
    message = (
        f"paddle_pangu.parallel.cpu_backend was written for paddlepaddle "
        f"{', '.join(SUPPORTED_PADDLE_VERSIONS)} but paddle {version} is installed; it patches "
        f"private fleet internals (mp_ops, p2p_communication, ProcessGroupGloo) that may have "
        f"changed. Install paddlepaddle=={SUPPORTED_PADDLE_VERSIONS[-1]}, or pass force=True "
        f"to install() to try anyway."
    )
    if not force:
        raise CpuBackendError(message)
    logger.warning("%s (forced)", message)


def _hcg_groups(hcg) -> list:
    getters = ("get_model_parallel_group", "get_pipe_parallel_group",
               "get_data_parallel_group", "get_sharding_parallel_group")
    groups = [getattr(hcg, name)() for name in getters if hasattr(hcg, name)]
    return [g for g in groups if g is not None and g.nranks > 1]  # 1-rank groups have no process group


def backend_is_cpu_gloo(hcg=None) -> bool:
    """Whether this process runs collectives on CPU over gloo.

    False on any CUDA / XPU / custom-device placement. With `hcg`, every
    hybrid group must be gloo; without it, the default group must be gloo
    when one exists (before `init_parallel_env` only the device is checked).
    """
    if not paddle.get_device().startswith("cpu"):
        return False
    if hcg is not None:
        return all(is_gloo_group(group) for group in _hcg_groups(hcg))
    if collective.is_initialized():
        return is_gloo_group(None)
    return True


def _patch_table() -> list[tuple[object, str, object]]:
    table = [(core.ProcessGroupGloo, name, fn) for name, fn in collectives.GLOO_METHOD_PATCHES.items()]
    originals = {name: getattr(fleet_mp_ops, name) for name in CpuMpOps({}).table()}
    for name, fn in CpuMpOps(originals).table().items():
        table.append((fleet_mp_ops, name, fn))
        if hasattr(collective, name):
            table.append((collective, name, fn))
    return (table + groups.patch_table() + pipeline.patch_table() + sharding.patch_table()
            + inputs.patch_table())


def install(hcg=None, force: bool = False) -> bool:
    """Patch paddle so fleet's mp / pp / sharding work on CPU gloo groups.

    Args:
        hcg: fleet's HybridCommunicateGroup (after `fleet.init`); its groups
            must all be gloo for the adapter to install.
        force: install on an unsupported paddle version (logs a warning).

    Returns:
        True if the adapter is active after the call, False if it was a
        no-op because the backend is not CPU/gloo.

    Raises:
        CpuBackendError: unsupported paddle version and not `force`.
    """
    if is_active():
        return True
    if not backend_is_cpu_gloo(hcg):
        logger.debug("cpu_backend.install: device %s is not CPU/gloo, nothing to do", paddle.get_device())
        return False
    _check_version(force)
    if len(collective._get_group_map_by_name()) > 1 and collective._get_global_env().world_size > 2:
        logger.warning("cpu_backend.install() called after sub-groups were created; with more than "
                       "2 processes call it before fleet.init (gloo group creation needs it, see groups.py)")
    for owner, name, value in _patch_table():
        original = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name, _MISSING)
        _saved.append((owner, name, original))
        setattr(owner, name, value)
    logger.info("cpu_backend: fleet mp/pp/sharding adapter for gloo installed (%d patches)", len(_saved))
    return True


def uninstall() -> None:
    """Undo `install()`, restoring every patched attribute."""
    while _saved:
        owner, name, original = _saved.pop()
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
