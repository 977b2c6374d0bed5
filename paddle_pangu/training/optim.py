"""AdamW with PanGu's parameter groups, and the warmup + cosine schedule.

REF "Training recipe": AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1
except layernorm and bias, grad-norm clip 1.0, linear warmup then cosine decay
to a floor (2.6B: 1e-4 -> 1e-6).
"""
from __future__ import annotations

import math

import paddle
from paddle.optimizer.lr import LRScheduler

from .. import kernels

class WarmupCosineDecay(LRScheduler):
    """Linear warmup from 0 to `max_lr` over `warmup_steps`, then decay to `min_lr`.

    `decay_style` is `cosine` (REF), `linear` or `constant`; after
    `decay_steps` the rate stays at `min_lr`. The scheduler is stepped once
    per optimizer step, so `last_epoch` is the number of finished steps.
    """

    def __init__(self, max_lr, min_lr, warmup_steps, decay_steps, decay_style="cosine", last_epoch=-1):
        if decay_style not in ("cosine", "linear", "constant"):
            raise ValueError(f"decay_style={decay_style!r}: expected cosine | linear | constant")
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = max(int(decay_steps), self.warmup_steps + 1)
        self.decay_style = decay_style
        super().__init__(learning_rate=float(max_lr), last_epoch=last_epoch)

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step `step` (0-based)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if self.decay_style == "constant":
            return self.max_lr
        progress = min(1.0, (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps))
        if self.decay_style == "linear":
            coeff = 1.0 - progress
        else:
            coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def get_lr(self) -> float:
        return self.lr_at(max(self.last_epoch, 0))


def is_decayed(param) -> bool:
    """True for weights that get weight decay: matrices and embedding tables (ndim >= 2).

    REF: no decay on layernorm and bias. Both are exactly the 1-D parameters;
    deciding by shape rather than by name keeps the rule identical for the
    plain, tensor-parallel and pipeline models, whose structured names differ
    (a pipeline stage names the final layernorm `run_function.N.weight`).
    """
    return len(param.shape) >= 2


def decay_param_names(model: paddle.nn.Layer) -> set[str]:
    """The `param.name`s (Paddle's unique names) of the parameters that decay."""
    return {p.name for p in model.parameters() if is_decayed(p)}


def build_scheduler(optim_cfg, max_steps: int) -> WarmupCosineDecay:
    """Scheduler from a `run_config.OptimSection`."""
    return WarmupCosineDecay(
        max_lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        warmup_steps=optim_cfg.warmup_steps,
        decay_steps=optim_cfg.decay_steps or max_steps,
        decay_style=optim_cfg.decay_style,
    )


def build_optimizer(model: paddle.nn.Layer, optim_cfg, scheduler, multi_precision: bool = False):
    """AdamW over `model`'s trainable parameters, decay only on matrices/embeddings.

    The global-norm clip is a plain `ClipGradByGlobalNorm`; fleet's
    `distributed_optimizer` swaps it for the hybrid-parallel version.
    """
    decayed = decay_param_names(model)
    clip = RecordingClipGrad(optim_cfg.grad_clip) if optim_cfg.grad_clip > 0 else None
    return PanGuAdamW(
        learning_rate=scheduler,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        beta1=optim_cfg.beta1,
        beta2=optim_cfg.beta2,
        epsilon=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        apply_decay_param_fun=lambda name: name in decayed,
        grad_clip=clip,
        multi_precision=multi_precision,
    )


class PanGuAdamW(paddle.optimizer.AdamW):
    """Paddle's AdamW, with dense fp32 CPU parameters updated by the fused kernel (paddle_pangu/kernels).

    The kernel evaluates Paddle's CPU AdamW in its order (decay from the un-scaled lr, the moments,
    the bias-corrected step) on the same accumulators, so `state_dict` and checkpoints are Paddle's.
    Paddle's kernel runs on one thread on CPU, ours on all the process' threads (README "Benchmarks");
    Paddle's jit code rounds a small fraction of updates 1 ulp differently (tests/unit/test_kernels.py).
    Everything else (GPU / NPU, master weights, amsgrad, lazy mode, static graphs, parameter groups)
    runs Paddle's op.
    """

    def _append_optimize_op(self, block, param_and_grad):
        if isinstance(param_and_grad, dict) or self._amsgrad or self._lazy_mode or not paddle.in_dynamic_mode():
            return super()._append_optimize_op(block, param_and_grad)
        param, grad = param_and_grad
        if self._multi_precision and self._is_dtype_fp16_or_bf16(param.dtype):
            return super()._append_optimize_op(block, param_and_grad)
        with_decay = self._apply_decay_param_fun is None or bool(self._apply_decay_param_fun(param.name))
        moment1 = self._get_accumulator_master(self._moment1_acc_str, param)
        moment2 = self._get_accumulator_master(self._moment2_acc_str, param)
        beta1_pow = self._get_accumulator_master(self._beta1_pow_acc_str, param)
        beta2_pow = self._get_accumulator_master(self._beta2_pow_acc_str, param)
        betas = [b.item(0) if isinstance(b, paddle.Tensor) else b for b in (self._beta1, self._beta2)]
        lr = self._create_param_lr(param_and_grad)
        lr_ratio = 1.0 if self._lr_ratio is None else self._lr_ratio(param)
        if isinstance(self._weight_decay, (int, float)) and kernels.adamw_(
                param, grad, lr, moment1, moment2, beta1_pow, beta2_pow, beta1=betas[0], beta2=betas[1],
                epsilon=self._epsilon, lr_ratio=lr_ratio, coeff=self._weight_decay, with_decay=with_decay):
            return None
        return super()._append_optimize_op(block, param_and_grad)


class RecordingClipGrad(paddle.nn.ClipGradByGlobalNorm):
    """`ClipGradByGlobalNorm` that remembers the pre-clip global norm (for logging).

    Single process and pure data parallel use it directly. Under mp/pp/
    sharding fleet wraps it in `HybridParallelClipGrad`, whose cross-group
    norm `attach_norm_recorder` taps instead.

    Dense fp32 CPU gradients (the CPU training path) take a faster route to the same bits: the norm
    once, with the clip's own kernel and summation order (squared_l2_norm per gradient, stacked and
    summed, then sqrt), the scale `clip_norm / norm` computed in fp32 as the clip computes it, and
    applied in place with `scale_` only when the norm exceeds the limit (below it the clip multiplies
    by exactly 1.0). Paddle's clip multiplies every gradient by a broadcast [1] tensor and computes the norm
    a second time; `scale_` by a float is much cheaper per element (README "Benchmarks"). Anything else (fp16/bf16, selected rows, distributed tensors, sharded norms) runs Paddle's
    clip. tests/unit/test_optim.py checks both paths give the same gradients and norm.
    """

    def __init__(self, clip_norm: float):
        super().__init__(clip_norm, auto_skip_clip=True)
        self.last_norm: paddle.Tensor | None = None

    def _fast_path(self, grads) -> bool:
        return bool(grads) and not self.should_comm_on_shard_dim and all(
            g.dtype == paddle.float32 and g.place.is_cpu_place() and not g.is_selected_rows()
            and not (hasattr(g, "is_dist") and g.is_dist()) for g in grads)

    @paddle.no_grad()
    def _dygraph_clip(self, params_grads):
        from ..parallel.fleet_compat import squared_l2_norm

        grads = [g for p, g in params_grads if g is not None and getattr(p, "need_clip", True)]
        if not self._fast_path(grads):
            squares = [squared_l2_norm(g.astype("float32")) for g in grads]
            self.last_norm = paddle.sqrt(paddle.add_n(squares)) if squares else paddle.zeros([])
            return super()._dygraph_clip(params_grads)
        norm = paddle.sqrt(paddle.stack([squared_l2_norm(g) for g in grads]).sum())  # the clip's own order
        self.last_norm = norm
        limit = paddle.full([1], self.clip_norm, dtype="float32")
        if float(norm) > float(limit):  # compared in fp32, as the clip compares (clip_norm may not be an fp32)
            scale = float(paddle.divide(limit, norm.reshape([1])))  # the fp32 quotient, exactly
            for g in grads:
                g.scale_(scale)
        return params_grads


def attach_norm_recorder(optimizer):
    """Return a zero-arg callable giving the last step's global grad norm (float or None).

    Works for a plain optimizer (RecordingClipGrad) and for fleet's wrappers,
    where `HybridParallelClipGrad._global_norm` all-reduces the squared norms
    over the sharding / mp / pp groups in place; we read them right after.
    """
    from ..parallel.fleet_compat import innermost_with_clip, record_hybrid_global_norm

    holder = innermost_with_clip(optimizer)
    clip = getattr(holder, "_grad_clip", None) if holder is not None else None
    if clip is None:
        return lambda: None
    if isinstance(clip, RecordingClipGrad):
        return lambda: None if clip.last_norm is None else float(clip.last_norm)
    reader = record_hybrid_global_norm(clip)  # fleet's HybridParallelClipGrad (private, see fleet_compat)
    return reader if reader is not None else (lambda: None)
