"""Fleet's tensor-parallel input broadcast on CPU gloo groups.

`TensorParallel._pre_forward` (what PaddleNLP's Trainer runs every step with
`tensor_parallel_degree > 1`) calls `hybrid_parallel_util.broadcast_input_data`,
which asserts a gpu / xpu / custom place (docs/PLATFORM.md), so on CPU the Trainer
crashes at its first step. The replacement broadcasts the same nested
inputs (tensors by shape then data, other values as objects) from the mp
group's source rank with the synchronous gloo broadcast, through fleet's
own `_broadcast_nested_data`; only the place check differs.
"""
from __future__ import annotations

import paddle
from paddle.distributed.fleet.meta_parallel import tensor_parallel
from paddle.distributed.fleet.utils import hybrid_parallel_util

_original = hybrid_parallel_util.broadcast_input_data


def broadcast_input_data(hcg, *inputs, **kwargs):
    """CPU: broadcast inputs inside the mp group; any other device: fleet's original."""
    if not paddle.get_device().startswith("cpu"):
        return _original(hcg, *inputs, **kwargs)
    place = paddle.CPUPlace()
    if inputs:
        inputs = hybrid_parallel_util._broadcast_nested_data(hcg, "cpu", place, inputs)
    if kwargs:
        kwargs = hybrid_parallel_util._broadcast_nested_data(hcg, "cpu", place, kwargs)
    return inputs, kwargs


def patch_table() -> list[tuple[object, str, object]]:
    """(owner, attribute, new value) triples applied by `install()`."""
    return [
        (hybrid_parallel_util, "broadcast_input_data", broadcast_input_data),
        (tensor_parallel, "broadcast_input_data", broadcast_input_data),  # imported by name there
    ]
