"""Sharding (ZeRO) settings fleet needs on CPU gloo groups.

Stage 1 (`DygraphShardingOptimizer`) runs on CPU as is. Stage 2 on CPU is
`DygraphShardingOptimizerV2`, enabled with
`strategy.hybrid_configs["sharding_configs"].split_param = True`: each rank
keeps only its slice of the fused gradients and optimizer states. Two fixes:

* it fuses parameters through `fleet.utils.tensor_fusion_helper`, which only
  knows gpu/npu/xpu buffer alignment; CPU gets the same 256-byte alignment.
  Its reduce-scatter is emulated in `collectives.py`;
* its `clear_grad` calls `param.clear_gradient(True)`. On CPU the next
  backward then REPLACES `param.grad` instead of accumulating into it, so
  the gradient no longer lives in the fused buffer that is reduce-scattered
  and every step after the first updates with zeros. Zeroing `param.grad`
  in place keeps it a view of the buffer.

`paddle.distributed.sharding.group_sharded_parallel` (GroupShardedStage2/3)
asserts a GPU/XPU/custom device in several places and is not supported on
CPU: use `split_param` for stage 2 on CPU.
"""
from __future__ import annotations

from paddle.distributed.fleet.meta_optimizers.dygraph_optimizer.dygraph_sharding_optimizer import (
    DygraphShardingOptimizerV2,
)
from paddle.distributed.fleet.utils import tensor_fusion_helper

from ..fleet_compat import zero_grads_in_place

_original_v2_clear_grad = DygraphShardingOptimizerV2.clear_grad


def v2_clear_grad(self, set_to_zero=True):
    """`DygraphShardingOptimizerV2.clear_grad` that zeroes fused grads in place."""
    if not set_to_zero or self.sd_release_grads:
        return _original_v2_clear_grad(self, set_to_zero)
    return zero_grads_in_place(self)


def patch_table() -> list[tuple[object, str, object]]:
    """(owner, attribute, new value) triples applied by `install()`."""
    return [
        (tensor_fusion_helper, "alignment", {**tensor_fusion_helper.alignment, "cpu": 256}),
        # cached device type; CPUPlace has no get_device_type(), so the helper would say "unknown"
        (tensor_fusion_helper, "__current_device_type__", "cpu"),
        (DygraphShardingOptimizerV2, "clear_grad", v2_clear_grad),
    ]
