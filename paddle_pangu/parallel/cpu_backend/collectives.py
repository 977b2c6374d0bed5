"""Calc-stream collectives for Paddle's gloo process group.

Fleet's tensor- and pipeline-parallel code talks to a group through
`group.process_group.<op>_on_calc_stream(...)` (and, for sharding,
`reduce_scatter*`). `ProcessGroupGloo` in paddle 3.3.1 only implements the
plain `sync_op` collectives and raises "ProcessGroupGLOO does not support ...
with sync_op and use_calc_stream flag" for the rest. On CPU there is no
separate calculation stream, so each calc-stream call is exactly the
synchronous call; reduce-scatter is emulated as an all-reduce followed by
taking this rank's slice of dim 0. Point-to-point on a group of more than
2 ranks is routed through the 2-rank group of the pair (groups.py).

`GLOO_METHOD_PATCHES` maps method name -> replacement; the package
`install()` sets them on the `ProcessGroupGloo` class, so every gloo group
(existing or created later) gets them, and NCCL/XCCL groups are untouched.
"""
from __future__ import annotations

import logging

import paddle
from paddle.base import core
from paddle.distributed import collective
from paddle.distributed.communication.reduce import ReduceOp, _get_reduce_op

from . import groups

logger = logging.getLogger(__name__)
_native_send = core.ProcessGroup.send
_native_recv = core.ProcessGroup.recv


def _sum_op():
    return _get_reduce_op(ReduceOp.SUM)


def all_reduce_on_calc_stream(pg, tensor, op=None):
    """In-place all-reduce (default SUM), synchronous."""
    return pg.all_reduce(tensor, _sum_op() if op is None else op, True)


def all_gather_into_tensor_on_calc_stream(pg, out, in_tensor):
    """Gather `in_tensor` from every rank, concatenated on dim 0 into `out`."""
    return pg.all_gather_into_tensor(out, in_tensor, True)


def all_gather_on_calc_stream(pg, tensor_list, tensor):
    """Gather `tensor` from every rank into the pre-sized `tensor_list`."""
    return pg.all_gather(tensor_list, tensor, True)


def broadcast_on_calc_stream(pg, tensor, src):
    """In-place broadcast from group rank `src`, synchronous."""
    return pg.broadcast(tensor, src, True)


def _p2p_route(pg, peer_in_group: int):
    """(process group, peer rank in it) to use for point-to-point with `peer_in_group`.

    Groups of more than 2 ranks go through the pair's 2-rank group when one
    exists (see groups.py: gloo's per-process tags only stay in step when
    both ranks take part in every op); otherwise the call stays on `pg`,
    which works only while the two ranks' op counts on `pg` agree.
    """
    if pg.size() <= 2:
        return pg, peer_in_group
    group = next((g for g in collective._get_group_map().values() if g.process_group is pg), None)
    pair = groups.pair_group(group.ranks[peer_in_group]) if group is not None else None
    if pair is None:
        if pg not in _warned:
            _warned.append(pg)
            logger.warning("cpu_backend: point-to-point on a gloo group of %d ranks without a 2-rank pair group; "
                           "it hangs once the ranks' op counts differ (see cpu_backend/groups.py)", pg.size())
        return pg, peer_in_group
    return pair.process_group, pair.get_group_rank(group.ranks[peer_in_group])


_warned: list = []


def send(pg, tensor, dst, sync_op=True):
    """Send to group rank `dst` (always completes before returning)."""
    route, peer = _p2p_route(pg, dst)
    return _native_send(route, tensor, peer, True)


def recv(pg, tensor, src, sync_op=True):
    """Receive from group rank `src` into `tensor` (always completes before returning)."""
    route, peer = _p2p_route(pg, src)
    return _native_recv(route, tensor, peer, True)


def send_on_calc_stream(pg, tensor, dst):
    """Blocking send to group rank `dst`."""
    return send(pg, tensor, dst, True)


def recv_on_calc_stream(pg, tensor, src):
    """Blocking receive from group rank `src` into `tensor`."""
    return recv(pg, tensor, src, True)


def reduce(pg, tensor, dst, op=None, sync_op=True):
    """Reduce to group rank `dst` as all-reduce on a copy; only `dst` is written.

    gloo's native reduce uses the other ranks' tensors as scratch space
    (measured: reducing [1,1,1] + [2,2,2] to rank 0 left [2,2,3] on rank 1);
    NCCL leaves them unchanged, and fleet's callers may rely on that.
    """
    buffer = tensor.clone()  # same shape as tensor
    task = pg.all_reduce(buffer, _sum_op() if op is None else op, True)
    if pg.rank() == dst:
        tensor.copy_(buffer, True)
    return task


def reduce_on_calc_stream(pg, tensor, dst, op=None):
    """Calc-stream variant of `reduce`."""
    return reduce(pg, tensor, dst, op, True)


def reduce_scatter_tensor(pg, out, in_tensor, op=None, sync_op=True):
    """`out` = this rank's dim-0 slice of the reduction of `in_tensor`.

    in_tensor: [nranks * n, ...]; out: [n, ...]. gloo has no reduce-scatter,
    so this all-reduces a copy (nranks x the traffic, fine for CPU tests).
    """
    nranks, rank = pg.size(), pg.rank()
    if in_tensor.shape[0] != out.shape[0] * nranks:
        raise ValueError(
            f"reduce_scatter_tensor: input dim 0 ({in_tensor.shape[0]}) must be "
            f"nranks ({nranks}) x output dim 0 ({out.shape[0]})"
        )
    buffer = in_tensor.clone()  # [nranks * n, ...]
    task = pg.all_reduce(buffer, _sum_op() if op is None else op, True)
    chunk = out.shape[0]
    out.copy_(buffer[rank * chunk:(rank + 1) * chunk], True)  # [n, ...]
    return task


def reduce_scatter_tensor_on_calc_stream(pg, out, in_tensor, op=None):
    """Calc-stream variant of `reduce_scatter_tensor`."""
    return reduce_scatter_tensor(pg, out, in_tensor, op, True)


def reduce_scatter(pg, out, tensor_list, op=None, sync_op=True):
    """`out` = reduction over ranks of `tensor_list[rank]` (list form)."""
    if len(tensor_list) != pg.size():
        raise ValueError(
            f"reduce_scatter: got {len(tensor_list)} tensors, expected one per rank ({pg.size()})"
        )
    buffer = paddle.concat([t.reshape([1, -1]) for t in tensor_list], axis=0)  # [nranks, numel]
    task = pg.all_reduce(buffer, _sum_op() if op is None else op, True)
    out.copy_(buffer[pg.rank()].reshape(out.shape), True)
    return task


def reduce_scatter_on_calc_stream(pg, out, tensor_list, op=None):
    """Calc-stream variant of `reduce_scatter`."""
    return reduce_scatter(pg, out, tensor_list, op, True)


GLOO_METHOD_PATCHES = {
    "all_reduce_on_calc_stream": all_reduce_on_calc_stream,
    "all_gather_into_tensor_on_calc_stream": all_gather_into_tensor_on_calc_stream,
    "all_gather_on_calc_stream": all_gather_on_calc_stream,
    "broadcast_on_calc_stream": broadcast_on_calc_stream,
    "send": send,
    "recv": recv,
    "send_on_calc_stream": send_on_calc_stream,
    "recv_on_calc_stream": recv_on_calc_stream,
    "reduce": reduce,
    "reduce_on_calc_stream": reduce_on_calc_stream,
    "reduce_scatter_tensor": reduce_scatter_tensor,
    "reduce_scatter_tensor_on_calc_stream": reduce_scatter_tensor_on_calc_stream,
    "reduce_scatter": reduce_scatter,
    "reduce_scatter_on_calc_stream": reduce_scatter_on_calc_stream,
}
