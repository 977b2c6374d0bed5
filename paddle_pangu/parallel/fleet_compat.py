"""The fence around private Paddle / fleet / PaddleNLP names (outside the CPU gloo adapter).

Every use of a name Paddle does not promise to keep lives here, with the
version it was checked against. The CPU adapter (`cpu_backend/`) has its own
table of patches and `uninstall()`; the rules are the same:

* each function below names the private attribute it touches and the
  version it was read against (paddlepaddle 3.3.1, paddlenlp 3.0.0b4);
* `check_version()` runs before the first private use: on another paddle
  version it raises `FleetCompatError` (set `PANGU_ALLOW_UNTESTED_PADDLE=1`
  to go on with a warning), so a renamed attribute fails with a message
  naming this file instead of deep inside a training step.

Callers: `parallel/layers.py` (mp ops), `parallel/context.py` (PaddleNLP's
tensor-parallel path), `model/ops.py` (Ascend flash attention),
`model/modeling_pp.py` (pipeline shared weights and names),
`training/optim.py` (grad-norm recording).
"""
from __future__ import annotations

import logging
import os

import paddle

from ..errors import PanGuError

logger = logging.getLogger(__name__)

CHECKED_PADDLE_VERSIONS = ("3.3.1",)
CHECKED_PADDLENLP_VERSIONS = ("3.0.0b4",)
ALLOW_ENV = "PANGU_ALLOW_UNTESTED_PADDLE"
_checked: list[str] = []


class FleetCompatError(PanGuError, RuntimeError):
    """The installed Paddle is not one the private uses below were checked against."""


def check_version(version: str | None = None) -> None:
    """Raise FleetCompatError unless paddle is a checked version (or PANGU_ALLOW_UNTESTED_PADDLE=1)."""
    version = version or paddle.__version__
    if version in CHECKED_PADDLE_VERSIONS or version in _checked:
        return
    message = (f"paddle_pangu/parallel/fleet_compat.py uses private Paddle names checked against paddlepaddle "
               f"{', '.join(CHECKED_PADDLE_VERSIONS)}, but paddle {version} is installed; install "
               f"paddlepaddle=={CHECKED_PADDLE_VERSIONS[-1]} or set {ALLOW_ENV}=1 to try anyway")
    if os.environ.get(ALLOW_ENV) != "1":
        raise FleetCompatError(message)
    logger.warning("%s (allowed by %s)", message, ALLOW_ENV)
    _checked.append(version)


# ---- fleet state (paddle 3.3.1) ------------------------------------------------------------------
def hybrid_group():
    """fleet's HybridCommunicateGroup, or None before `fleet.init(is_collective=True)`.

    Private: `fleet.fleet._is_collective` (paddle 3.3.1: set by fleet.init; calling
    `get_hybrid_communicate_group()` before it fails). Used only for PaddleNLP's
    `config.tensor_parallel_degree` path (`context.from_model_config`).
    """
    check_version()
    from paddle.distributed import fleet

    if not getattr(fleet.fleet, "_is_collective", False):
        return None
    return fleet.get_hybrid_communicate_group()


# ---- tensor-parallel ops (paddle 3.3.1) ----------------------------------------------------------
def c_identity(x, group):
    """Identity forward, all-reduce of the gradient over `group` (`fleet.layers.mpu.mp_ops._c_identity`,
    paddle 3.3.1; looked up at call time because the CPU adapter replaces it)."""
    check_version()
    from paddle.distributed.fleet.layers.mpu import mp_ops

    return mp_ops._c_identity(x, group=group)


def c_concat(x, group):
    """All-gather along the last axis over `group` (`mp_ops._c_concat`, paddle 3.3.1)."""
    check_version()
    from paddle.distributed.fleet.layers.mpu import mp_ops

    return mp_ops._c_concat(x, group=group)


# ---- custom ops (paddle 3.3.1 + paddle-custom-npu) -----------------------------------------------
def run_custom_op(name: str, *args):
    """A registered custom-device op (`paddle.base.core.eager._run_custom_op`, paddle 3.3.1; the call
    PaddleNLP's llama fusion_ops use for `flash_attention_npu`)."""
    check_version()
    from paddle.base import core

    return core.eager._run_custom_op(name, *args)


# ---- pipeline layer internals (paddle 3.3.1, paddlenlp 3.0.0b4) ----------------------------------
def mark_shared_weight_owners(pipeline_layer) -> None:
    """Set `is_firstly_shared` on each shared (tied) weight: True on the lowest rank of its group.

    Private: `PipelineLayer.shared_comm` ({key: {"ranks", "layer", "weight_attr", ...}}) and the
    parameter attribute `is_firstly_shared` read by `HybridParallelClipGrad` (paddle 3.3.1).
    """
    check_version()
    for comm in pipeline_layer.shared_comm.values():
        owner = pipeline_layer.global_rank == min(comm["ranks"])
        for attr in comm["weight_attr"]:
            getattr(comm["layer"], attr).is_firstly_shared = owner


def pipeline_name_mapping(pipeline_model) -> dict[str, str]:
    """{PipelineLayer parameter name: single-model name} of a PaddleNLP `PipelinePretrainedModel`.

    Private: `_set_pipeline_name_mapping()` and `_pp_to_single_mapping` (paddlenlp 3.0.0b4).
    """
    check_version()
    pipeline_model._set_pipeline_name_mapping()
    return dict(pipeline_model._pp_to_single_mapping)


# ---- optimizer internals (paddle 3.3.1) ----------------------------------------------------------
def squared_l2_norm(x):
    """sum(x^2) in one pass with no full-size temporary: the kernel `ClipGradByGlobalNorm` itself uses
    (`paddle._C_ops.squared_l2_norm`, paddle 3.3.1). Measured on a [40000, 512] fp32 gradient: 6.8 ms
    vs 40 ms for sum(square(x)); `paddle.dot` and `linalg.norm` were 4% off (sequential fp32 sums)."""
    return paddle._C_ops.squared_l2_norm(x)


def wrapped_optimizers(optimizer, max_depth: int = 8):
    """The optimizer and the ones fleet's wrappers hold inside it, outermost first, at most `max_depth`
    (wrappers keep the inner one in `_inner_opt` or `_optim`; paddle 3.3.1)."""
    seen = 0
    while optimizer is not None and seen < max_depth:
        yield optimizer
        optimizer = vars(optimizer).get("_inner_opt") or vars(optimizer).get("_optim")
        seen += 1


def innermost_with_clip(optimizer, max_depth: int = 8):
    """The optimizer inside fleet's wrappers that owns `_grad_clip`, or None."""
    return next((o for o in wrapped_optimizers(optimizer, max_depth) if "_grad_clip" in vars(o)), None)


def sharding_stage2_ranges(optimizer, max_depth: int = 8) -> dict | None:
    """{parameter unique name: (begin, end, padded size)} of this rank's flat slice of each parameter
    under fleet's sharding stage 2 (DygraphShardingOptimizerV2 inside the wrappers), or None without it.

    Paddle 3.3.1 tensor_fusion_helper.py `ShardingGradView`: the parameter sits at `_index` of a fused
    buffer, padded to `_padded_size` elements; this rank's slice (its moments and master weight) is the
    buffer range [`_param_begin`, `_param_end`), empty when begin >= end. Returned relative to the
    parameter's own start, so [begin, end) indexes the zero-padded flat parameter."""
    for opt in wrapped_optimizers(optimizer, max_depth):
        buffers = vars(opt).get("_comm_buffer_list")
        if buffers is not None:
            return {name: (view._param_begin - view._index, view._param_end - view._index, view._padded_size)
                    for buffer in buffers for name, view in buffer._sharding_param_grad_view.items()}
    return None


def zero_stage2_grads_in_place(optimizer, max_depth: int = 8) -> bool:
    """Make fleet's sharding stage 2 (DygraphShardingOptimizerV2 inside the wrappers) clear gradients in
    place on every device; True if there was one to change.

    Paddle 3.3.1 `DygraphShardingOptimizerV2.clear_grad` calls `param.clear_gradient(True)`, which zeroes
    the gradient and marks its accumulation node "fake empty" (eager_method.cc `tensor_clear_gradient`), so
    the next backward REPLACES `param.grad` by a new tensor instead of adding into it. Under stage 2 the
    gradient is a view of the fused buffer that is scaled, reduce-scattered and sliced for the optimizer, so
    every step after the first updated with zeros: found on `npu` (grad norm 0.0000 from step 2,
    docs/NPU_KERNELS.md "Sharding stage 2"), the same Paddle code on any device (cpu_backend/sharding.py patches it for
    gloo). `zero_()` keeps the gradient a view of the buffer. Only the `set_to_zero` clear without
    `release_grads` changes; the rest is Paddle's method."""
    from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.dygraph_sharding_optimizer import (
        DygraphShardingOptimizerV2,
    )

    stage2 = next((o for o in wrapped_optimizers(optimizer, max_depth) if isinstance(o, DygraphShardingOptimizerV2)),
                  None)
    if stage2 is None:
        return False
    check_version()
    original = stage2.clear_grad

    def clear_grad(set_to_zero=True):
        if not set_to_zero or stage2.sd_release_grads:
            return original(set_to_zero)
        return zero_grads_in_place(stage2)

    stage2.clear_grad = clear_grad
    return True


def zero_grads_in_place(stage2) -> None:
    """Zero every gradient (or fp32 `main_grad`) of a DygraphShardingOptimizerV2's parameters in place, so each
    stays a view of the fused gradient buffer (`zero_stage2_grads_in_place`; cpu_backend/sharding.py on gloo).
    Private: `DygraphShardingOptimizerV2._parameter_list` (paddle 3.3.1)."""
    for param in stage2._parameter_list:
        if getattr(param, "main_grad", None) is not None:
            param.main_grad.zero_()
        elif param.grad is not None:
            param.grad.zero_()  # in place: stays a view of the fused gradient buffer


def record_hybrid_global_norm(clip):
    """Wrap fleet's `HybridParallelClipGrad._global_norm(dist_sq, not_dist_sq)` (paddle 3.3.1: it
    all-reduces the squared norms over the sharding / mp / pp groups in place) so the global norm can
    be read after each step. Returns a zero-arg reader (float or None), or None if `clip` is not one."""
    if not (hasattr(clip, "_global_norm") and hasattr(clip, "_hcg")):
        return None
    check_version()
    record: dict = {}
    original = clip._global_norm

    def recording(dist_sq, not_dist_sq):
        original(dist_sq, not_dist_sq)
        record["norm"] = paddle.sqrt(dist_sq + not_dist_sq)

    clip._global_norm = recording
    return lambda: float(record["norm"]) if "norm" in record else None


# ---- kernels (paddle 3.3.1) ------------------------------------------------------------------------
def registered_kernels() -> set[str]:
    """Names of every op with a registered kernel, a loaded device plugin's included (empty when the query
    fails). Private: `paddle.base.core._get_all_register_op_kernels` (no public API lists a plugin's kernels;
    parallel/device.py asks it whether the Ascend plugin's `flash_attention_npu` is there)."""
    check_version()
    try:
        return set(paddle.base.core._get_all_register_op_kernels("all"))
    except (AttributeError, RuntimeError, TypeError):
        return set()
