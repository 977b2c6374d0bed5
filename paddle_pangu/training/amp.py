"""Mixed precision plan: which AMP mode a run may use on its device, and its helpers.

REF "Training recipe": fp32 master weights, fp16 matmuls, fp32 layernorm /
softmax / loss, dynamic loss scale. Here:
- float32: AMP off.
- float16 O1/O2 (GPU, NPU): autocast, O2 keeps fp32 master weights in the
  optimizer (`multi_precision`), dynamic loss scaling through GradScaler.
- bfloat16 O1/O2 (GPU, NPU): no loss scaling needed. On CPU only O1 and only
  if this Paddle really autocasts on a CPU place (3.3.1 does not: its
  auto_cast is a no-op there); anything else is rejected with a message
  saying why.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import paddle
from paddle_pangu.errors import ConfigError


class AmpConfigError(ConfigError):
    """The requested AMP mode cannot run on the chosen device."""


@dataclass
class AmpPlan:
    """A validated AMP mode: `enabled`, `dtype`, `level`, loss scale, black list."""

    enabled: bool
    dtype: str = "float32"
    level: str = "O1"
    init_loss_scale: float = 32768.0
    custom_black_list: tuple = ()

    @property
    def use_loss_scaling(self) -> bool:
        return self.enabled and self.dtype == "float16"

    @property
    def master_weights(self) -> bool:
        """O2 casts the parameters; the optimizer then keeps fp32 masters."""
        return self.enabled and self.level == "O2"

    def autocast(self):
        """Context manager for forward passes (no-op when AMP is off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype,
                                    custom_black_list=set(self.custom_black_list))

    def decorate(self, model, optimizer):
        """O2: cast model parameters (layernorm stays fp32) and enable fp32 master weights."""
        if not self.master_weights:
            return model, optimizer
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2",
                                               dtype=self.dtype, master_weight=True)
        return model, optimizer

    def make_scaler(self):
        """Dynamic loss scaler for fp16, None otherwise.

        REF "Training recipe" (dynamic loss scale; MindSpore's DynamicLossScaleUpdateCell, scale_factor 2,
        scale_window 1000): a step whose gradients overflow is skipped and the scale halves at once;
        1000 clean steps in a row double it. Paddle's default halves only after 2 overflows in a row.
        """
        if not self.use_loss_scaling:
            return None
        return paddle.amp.GradScaler(init_loss_scaling=self.init_loss_scale, use_dynamic_loss_scaling=True,
                                     incr_ratio=2.0, decr_ratio=0.5, incr_every_n_steps=1000,
                                     decr_every_n_nan_or_inf=1)


def cpu_bf16_autocast_works() -> bool:
    """Probe: does `paddle.amp.auto_cast(dtype='bfloat16')` really cast a CPU matmul?

    Paddle 3.3.1 only autocasts on CUDA / XPU / custom places and warns that
    it "makes no effect" elsewhere; a later Paddle that casts on CPU passes.
    """
    if not paddle.amp.is_bfloat16_supported():
        return False
    previous = paddle.get_device()
    paddle.set_device("cpu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with paddle.amp.auto_cast(enable=True, level="O1", dtype="bfloat16"):
                out = paddle.matmul(paddle.ones([2, 2]), paddle.ones([2, 2]))  # [2, 2]
    finally:
        paddle.set_device(previous)
    return out.dtype == paddle.bfloat16


def plan_amp(amp_cfg, device: str) -> AmpPlan:
    """Validate `amp:` (run_config.AmpSection) against `device` ('cpu' | 'gpu' | 'npu')."""
    dtype, level = amp_cfg.dtype, amp_cfg.level
    if dtype == "float32":
        return AmpPlan(enabled=False)
    if device == "cpu":
        if dtype == "float16":
            raise AmpConfigError("amp.dtype=float16: fp16 training needs a GPU or NPU; "
                                 "on CPU use amp.dtype=float32 (or bfloat16 O1 where Paddle autocasts on CPU)")
        if level != "O1":
            raise AmpConfigError(f"amp.level={level}: on CPU only bfloat16 O1 (autocast) is supported; "
                                 "O2 (bf16 parameters + fp32 master weights) needs a GPU or NPU")
        if not cpu_bf16_autocast_works():
            raise AmpConfigError(f"amp.dtype=bfloat16: paddle {paddle.__version__} does not autocast on a CPU place "
                                 "(auto_cast is a no-op there, so the run would silently stay fp32); "
                                 "use amp.dtype=float32 on CPU")
    return AmpPlan(enabled=True, dtype=dtype, level=level, init_loss_scale=amp_cfg.init_loss_scale,
                   custom_black_list=tuple(amp_cfg.custom_black_list))
