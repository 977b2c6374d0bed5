"""CPU (gloo) versions of the tensor-parallel ops fleet's mp layers call.

paddle 3.3.1 has no CPU kernel for `c_identity`, `c_split`, `c_concat` and
`c_softmax_with_cross_entropy`, and `mp_allreduce_sum` needs NCCL
(see README.md, "Platform notes"). Each op here
is a `PyLayer` over the synchronous gloo collectives with the same
signature as the wrapper it replaces in
`paddle.distributed.fleet.layers.mpu.mp_ops`. Every wrapper falls back to
the original function when the group is not a gloo group, so installing
them can never change GPU/NPU behaviour.

Forward / backward pairs (Megatron's f/g operators):
    identity      : x            | all-reduce(dy)
    mp_allreduce  : all-reduce(x)| dy
    split         : x[..., mine] | all-gather-concat(dy, last dim)
    concat        : all-gather-concat(x, last dim) | dy[..., mine]
"""
from __future__ import annotations

import paddle
from paddle.autograd import PyLayer
from paddle.distributed import collective
from paddle.distributed.communication.reduce import ReduceOp, _get_reduce_op


def resolve_group(group):
    """The group an mp op runs on (`None` means the global default group)."""
    return collective._get_default_group() if group is None else group


def is_gloo_group(group) -> bool:
    """True when `group` (None = default group) is backed by gloo."""
    try:
        return resolve_group(group).backend.upper() == "GLOO"
    except (AttributeError, RuntimeError, AssertionError):
        return False


def _all_reduce(tensor, group, op=ReduceOp.SUM):
    """Synchronous in-place all-reduce on a gloo group."""
    group.process_group.all_reduce(tensor, _get_reduce_op(op), True)
    return tensor


def _gather_last_dim(tensor, group):
    """[..., n] on every rank -> [..., nranks * n] in rank order."""
    parts = [paddle.empty_like(tensor) for _ in range(group.nranks)]
    group.process_group.all_gather(parts, tensor.contiguous(), True)
    return paddle.concat(parts, axis=-1)


def _split_last_dim(tensor, group):
    """[..., nranks * n] -> this rank's [..., n] slice."""
    width = tensor.shape[-1]
    if width % group.nranks != 0:
        raise ValueError(
            f"tensor-parallel split: last dim {width} is not divisible by the mp degree {group.nranks}"
        )
    chunk = width // group.nranks
    return tensor[..., group.rank * chunk:(group.rank + 1) * chunk].contiguous()


class IdentityAllReduceGrad(PyLayer):
    """Forward identity, backward sum of the gradient over the mp group."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return _all_reduce(dy.clone(), ctx.group)


class AllReduceIdentityGrad(PyLayer):
    """Forward sum over the mp group, backward identity."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, dy):
        return dy


class SplitLastDim(PyLayer):
    """Forward: keep this rank's slice of the last dim; backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split_last_dim(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _gather_last_dim(dy, ctx.group)


class GatherLastDim(PyLayer):
    """Forward: all-gather-concat on the last dim; backward: keep own slice."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, dy):
        return _split_last_dim(dy, ctx.group)


class VocabParallelCrossEntropy(PyLayer):
    """Softmax cross entropy over logits split on the vocab (last) dim.

    logits: [..., V/mp] (this rank's vocab shard), label: [..., 1] int64
    global ids. Returns (loss [..., 1], softmax [..., V/mp]). Labels equal
    to `ignore_index` get loss 0 and zero gradient, as in the GPU kernel.
    """

    @staticmethod
    def forward(ctx, logits, label, group, ignore_index):
        rank, shard = group.rank, logits.shape[-1]
        start = rank * shard
        with paddle.no_grad():
            x = logits.astype("float32")  # [..., V/mp]
            global_max = _all_reduce(x.max(axis=-1, keepdim=True), group, ReduceOp.MAX)  # [..., 1]
            shifted = x - global_max
            exp = paddle.exp(shifted)  # [..., V/mp]
            sum_exp = _all_reduce(exp.sum(axis=-1, keepdim=True), group)  # [..., 1]
            local = label - start  # [..., 1]
            in_shard = paddle.logical_and(local >= 0, local < shard)  # [..., 1]
            safe = paddle.where(in_shard, local, paddle.zeros_like(local))
            picked = paddle.take_along_axis(shifted, safe, axis=-1)  # [..., 1]
            target = _all_reduce(picked * in_shard.astype(x.dtype), group)  # [..., 1]
            valid = (label != ignore_index).astype(x.dtype)  # [..., 1]
            loss = (paddle.log(sum_exp) - target) * valid  # [..., 1]
            softmax = exp / sum_exp  # [..., V/mp]
        ctx.save_for_backward(softmax, safe, in_shard, valid)
        ctx.logits_dtype = logits.dtype
        return loss.astype(logits.dtype), softmax.astype(logits.dtype)

    @staticmethod
    def backward(ctx, dloss, dsoftmax=None):
        softmax, safe, in_shard, valid = ctx.saved_tensor()
        onehot = paddle.nn.functional.one_hot(safe.squeeze(-1), softmax.shape[-1])  # [..., V/mp]
        onehot = onehot * in_shard.astype(softmax.dtype)
        grad = (softmax - onehot) * (dloss.astype(softmax.dtype) * valid)  # [..., V/mp]
        return grad.astype(ctx.logits_dtype), None


class CpuMpOps:
    """Replacement wrappers bound to the originals they fall back to."""

    def __init__(self, originals: dict):
        self.originals = originals

    def c_identity(self, tensor, group=None, skip_c_identity_dynamic=False):
        """`mp_ops._c_identity`: identity forward, all-reduce backward."""
        if group is not None and not group.is_member():
            return None
        if not paddle.in_dynamic_mode() or not is_gloo_group(group):
            return self.originals["_c_identity"](tensor, group, skip_c_identity_dynamic)
        return IdentityAllReduceGrad.apply(tensor, resolve_group(group))

    def mp_allreduce(self, tensor, op=ReduceOp.SUM, group=None, use_calc_stream=True,
                     use_model_parallel=True, skip_c_identity_dynamic=False):
        """`mp_ops._mp_allreduce`: sum forward, identity backward."""
        if group is not None and not group.is_member():
            return None
        if not paddle.in_dynamic_mode() or not is_gloo_group(group):
            return self.originals["_mp_allreduce"](
                tensor, op, group, use_calc_stream, use_model_parallel, skip_c_identity_dynamic
            )
        if op != ReduceOp.SUM:
            raise ValueError(f"_mp_allreduce supports only ReduceOp.SUM, got {op}")
        return AllReduceIdentityGrad.apply(tensor, resolve_group(group))

    def c_split(self, tensor, group=None):
        """`mp_ops._c_split`: own last-dim slice forward, all-gather backward."""
        if group is not None and not group.is_member():
            return None
        if not paddle.in_dynamic_mode() or not is_gloo_group(group):
            return self.originals["_c_split"](tensor, group)
        return SplitLastDim.apply(tensor, resolve_group(group))

    def c_concat(self, tensor, group=None):
        """`mp_ops._c_concat`: all-gather on the last dim forward, own slice backward."""
        if group is not None and not group.is_member():
            return None
        if not paddle.in_dynamic_mode() or not is_gloo_group(group):
            return self.originals["_c_concat"](tensor, group)
        return GatherLastDim.apply(tensor, resolve_group(group))

    def c_softmax_with_cross_entropy(self, logits, label, group=None, return_softmax=False,
                                     ignore_index=-100):
        """`mp_ops._c_softmax_with_cross_entropy`: loss [..., 1] (and softmax) over vocab shards."""
        if group is not None and not group.is_member():
            return None
        if not paddle.in_dynamic_mode() or not is_gloo_group(group):
            return self.originals["_c_softmax_with_cross_entropy"](
                logits, label, group, return_softmax, ignore_index
            )
        group = resolve_group(group)
        if label.ndim == logits.ndim - 1:
            label = label.unsqueeze(-1)  # [..., 1]
        if label.ndim != logits.ndim or label.shape[-1] != 1:
            raise ValueError(
                f"parallel cross entropy: label shape {label.shape} must be logits shape "
                f"{logits.shape} without the last dim (or with it = 1)"
            )
        loss, softmax = VocabParallelCrossEntropy.apply(
            logits, label.astype("int64"), group, ignore_index
        )
        return (loss, softmax) if return_softmax else loss

    def table(self) -> dict:
        """Name in paddle's mp_ops / collective modules -> replacement."""
        return {
            "_c_identity": self.c_identity,
            "_mp_allreduce": self.mp_allreduce,
            "_c_split": self.c_split,
            "_c_concat": self.c_concat,
            "_c_softmax_with_cross_entropy": self.c_softmax_with_cross_entropy,
        }
