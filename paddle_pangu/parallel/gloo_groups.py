"""Reliable creation of several gloo process groups (CPU multi-process runs).

paddle 3.3.1's `ProcessGroupGloo` constructor runs gloo's
`connectFullMesh` on the job-wide TCP store with *unprefixed* rank keys
(paddle/fluid/distributed/collective/process_group_gloo.cc: `_context->
connectFullMesh(*_store, ...)` with `GlooStore(store)`). Every group
therefore rendezvouses on the same keys: disjoint groups created at the
same time (fleet creates mp groups [0,1] and [2,3] together) pair the wrong
ranks, and later groups read stale addresses of earlier ones. Observed
here with 4 CPU processes (mp2 x pp2): "Connection refused", gloo
TIMEOUT, or "address.cc: sizeof(impl_) == bytes.size()".

Fix (`install()`, called before fleet.init on CPU): each gloo
group other than the default one rendezvouses on its own fresh TCPStore,
hosted by the group's first rank, whose address is published in the
job store under a key unique to the group id. `core.Store` cannot be
subclassed from Python (no trampoline), so a prefixing wrapper is not an
option.
"""
from __future__ import annotations

import os
import socket

from paddle.base import core
from paddle.distributed import collective

STORE_TIMEOUT_S = 900
_KEY = "paddle_pangu/gloo_group_store/{gid}"
_group_stores: list = []  # keep every per-group store alive for the life of the process
_original = None  # paddle's _new_process_group_impl while installed


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _local_host() -> str:
    endpoint = os.environ.get("PADDLE_CURRENT_ENDPOINT", "127.0.0.1:0")
    return endpoint.rsplit(":", 1)[0]


def group_store(job_store, rank: int, world_size: int, gid: int):
    """A TCPStore private to group `gid`; group rank 0 hosts it and publishes host:port."""
    key = _KEY.format(gid=gid)
    if rank == 0:
        host = _local_host()
        port = _free_port(host)
        job_store.set(key, f"{host}:{port}")  # clients retry until the master below listens
        store = core.TCPStore(host, port, True, world_size, STORE_TIMEOUT_S)
    else:
        host, port = job_store.get(key).decode().rsplit(":", 1)
        store = core.TCPStore(host, int(port), False, world_size, STORE_TIMEOUT_S)
    _group_stores.append(store)
    return store


def install() -> bool:
    """Route every later gloo group creation (gid != 0) through `group_store`. Idempotent.

    Stays active for the life of the process: groups are also created after
    fleet.init (e.g. PipelineLayer's shared-embedding groups).
    """
    global _original
    if _original is not None:
        return False
    _original = collective._new_process_group_impl

    def new_process_group_impl(backend, store, rank, world_size, group_name, pg_options, group_id=0, **kwargs):
        if backend == "gloo" and group_id != 0:
            store = group_store(store, rank, world_size, group_id)
        return _original(backend, store, rank, world_size, group_name, pg_options, group_id=group_id, **kwargs)

    collective._new_process_group_impl = new_process_group_impl
    return True


def uninstall() -> None:
    """Restore paddle's group creation (tests)."""
    global _original
    if _original is not None:
        collective._new_process_group_impl = _original
        _original = None
