"""Pipeline-parallel settings that fleet needs on CPU gloo groups.

Three things stop fleet's `PipelineLayer` / `PipelineParallel` on CPU
(README.md, "Platform notes"): `ParallelEnv` has no `_device_id` on CPU builds
(PipelineLayer reads `ParallelEnv().device_id`); p2p goes through
`send/recv_on_calc_stream` (handled in `collectives.py`); and two p2p
options assume asynchronous NCCL sends:

* the default batched p2p order posts sends before receives on both
  neighbours. gloo's send is blocking, so the order fleet uses for devices
  without asynchronous send ("recv_prev -> send_next -> recv_next ->
  send_prev", `PADDLE_P2P_SYNC_SEND`) is forced;
* with mp > 1 fleet sends only 1/mp of an activation and all-gathers the
  rest inside the mp group (`send_partial` / `all_gather_partial`), which
  gloo lacks. On CPU whole tensors are sent instead; the result is the same.
"""
from __future__ import annotations

from paddle.distributed import parallel
from paddle.distributed.fleet.meta_parallel.pp_utils import p2p_communication


def never_partial(tensor, mp_degree) -> bool:
    """Replacement for p2p's `_is_valid_send_recv_partial`: send whole tensors."""
    return False


def patch_table() -> list[tuple[object, str, object]]:
    """(owner, attribute, new value) triples applied by `install()`."""
    return [
        # class-level default, shadowed by the instance value on GPU/XPU/custom builds
        (parallel.ParallelEnv, "_device_id", 0),
        (p2p_communication, "_sync_send", True),
        (p2p_communication, "_is_valid_send_recv_partial", never_partial),
    ]
