"""Non-finite policy: never let a NaN / inf loss or gradient reach the weights.

`NonFiniteGuard.install(optimizer)` wraps the optimizer's `step` (the plain
loop calls it; fleet's `PipelineParallel.train_batch` calls it too), so every
step first checks its local gradients with one scalar: the float32 sum of
every gradient's float32 sum, which is NaN / inf as soon as any element is
(a small fraction of a step's forward + backward, and several times cheaper than
the squared global norm). With more
than one process the flag is all-reduced over the whole job, so every rank
skips together. A non-finite step skips the optimizer update (the weights,
moments and Adam's step count stay as they were) and its batch (the step
counter and the LR schedule move on, the data order is a function of the
step); `train.max_nonfinite_steps` consecutive bad steps are allowed, one more
stops the run with a checkpoint of the last good state and a one-line
`NonFiniteError` naming the step, the data position and whether the loss or the
gradient was non-finite. With fp16 loss scaling the scaler's own
skip-and-rescale handles overflowing gradients; a non-finite loss still counts.

Paddle's CPU `cross_entropy` returns ln(V) for all-NaN logits (docs/PLATFORM.md),
so the loss alone cannot be trusted: the gradient check is what catches a NaN
model; evaluation uses `finite_or_nan` on the logits.
"""
from __future__ import annotations

import math

import paddle

from paddle_pangu.errors import PanGuError


class NonFiniteError(PanGuError, RuntimeError):
    """Training produced non-finite losses or gradients for more consecutive steps than allowed."""


def grads_finite(parameters) -> bool:
    """True when every gradient of `parameters` is finite (one scalar reduction, one host sync)."""
    sums = [paddle.sum(p.grad, dtype="float32") for p in parameters if p.grad is not None]
    if not sums:
        return True
    return bool(paddle.isfinite(paddle.add_n(sums)))


def _any_rank(*flags: bool) -> list[bool]:
    """Each flag OR-ed over every process of the job (one all-reduce; no-op alone)."""
    if paddle.distributed.get_world_size() == 1:
        return list(flags)
    t = paddle.to_tensor([int(f) for f in flags], dtype="int32")
    paddle.distributed.all_reduce(t)
    return [bool(v) for v in t.numpy()]


def finite_or_nan(loss, logits):
    """`loss` if every logit is finite, else NaN (CPU cross_entropy reports ln V for NaN logits)."""
    ok = paddle.isfinite(paddle.sum(logits, dtype="float32"))
    return paddle.where(ok, loss, paddle.full_like(loss, float("nan")))


class NonFiniteGuard:
    """Skip the optimizer update of non-finite steps; stop after `max_bad` consecutive ones."""

    def __init__(self, max_bad: int, parameters):
        self.max_bad = int(max_bad)
        self.parameters = list(parameters)
        self.consecutive = 0
        self.total_skipped = 0
        self._grad_bad = False
        self._loss_bad = False

    def install(self, optimizer) -> None:
        """Route `optimizer.step` through the gradient check (idempotent per optimizer)."""
        if getattr(optimizer, "_pangu_nonfinite_guard", None) is self:
            return
        real_step = optimizer.step

        def guarded_step(*args, **kwargs):
            self._grad_bad, self._loss_bad = _any_rank(not grads_finite(self.parameters), self._loss_bad)
            if self._grad_bad or self._loss_bad:
                optimizer.clear_grad()
                return None
            return real_step(*args, **kwargs)

        optimizer.step = guarded_step
        optimizer._pangu_nonfinite_guard = self

    def begin_step(self) -> None:
        self._grad_bad = self._loss_bad = False

    def veto_loss(self, loss: float) -> None:
        """Called before the update with the host loss: a non-finite loss skips the update too."""
        if not math.isfinite(loss):
            self._loss_bad = True

    def end_step(self, loss: float) -> str | None:
        """After the step: None if it was good, else what was non-finite ('loss', 'gradient', both)."""
        loss_bad = self._loss_bad or not math.isfinite(loss)
        what = " and ".join(w for w, bad in (("loss", loss_bad), ("gradient", self._grad_bad)) if bad) or None
        if what is None:
            self.consecutive = 0
            return None
        self.consecutive += 1
        self.total_skipped += 1
        return what

    @property
    def exhausted(self) -> bool:
        return self.consecutive > self.max_bad

    def weights_finite(self) -> bool:
        """Every parameter finite on every rank (checked once, before the stop checkpoint)."""
        sums = [paddle.sum(p, dtype="float32") for p in self.parameters]
        local_bad = bool(sums) and not bool(paddle.isfinite(paddle.add_n(sums)))
        return not _any_rank(local_bad)[0]


def stop_message(step: int, what: str, loss: float, guard: NonFiniteGuard, batcher, saved: str | None) -> str:
    """The one-line reason a run stopped: the step, its data position, loss vs gradient, what was kept."""
    first = batcher.indices(step - 1)
    where = (f"step {step} (the batch of 0-based step {step - 1}: samples {(step - 1) * batcher.global_batch}.."
             f"{step * batcher.global_batch - 1} of the shuffled training order; rank 0 reads dataset rows "
             f"{[batcher._dataset_index(i) for i in first[:4]]}{'...' if len(first) > 4 else ''})")
    kept = (f"the last good state is saved as {saved}" if saved else
            "the weights are not finite, so no checkpoint was written; the previous checkpoint is kept")
    return (f"training stopped: {guard.consecutive} consecutive non-finite steps (limit "
            f"train.max_nonfinite_steps={guard.max_bad}); last at {where}: non-finite {what}, loss {loss}; "
            f"those updates were skipped and {kept}; lower optim.lr or check that data, then resume")
