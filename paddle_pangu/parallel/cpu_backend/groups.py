"""A fresh rendezvous store for every gloo sub-group.

`ProcessGroupGloo`'s constructor (paddle 3.3.1,
paddle/fluid/distributed/collective/process_group_gloo.cc) runs gloo's
full-mesh rendezvous on the job's one TCP store WITHOUT a per-group key
prefix (`GlooStore(store)`): every group's rank i writes and reads the key
"i". Disjoint groups created at the same time pair the wrong ranks, and a
member that reads its peer's key before the peer wrote it gets the address
of an older group: "connect [127.0.0.1]:NNNN: Connection refused",
"TIMEOUT ... pair.cc" or "address.cc: sizeof(impl_) == bytes.size()"
inside `fleet.init`. With 2 processes only one sub-group of size 2 exists,
so it rarely shows; with 4 processes (dp2 x mp2, mp2 x pp2) fleet.init
failed in most runs (measured; a barrier after each group only made it
rarer).

Fix: every gloo group other than the global one (gid 0) rendezvouses on
its own small TCP store, served by the group's rank 0 on a free port that
is published on the job store under a key unique to the group id. The port
is held from the moment it is chosen until the store listens
(`parallel/ports.py`): Paddle's TCPStore aborts the process on a taken port.
`core.Store` cannot be subclassed from Python (no pybind trampoline), so a
key-prefixing wrapper is not an option.

Second problem, pipelines of more than 2 stages: a gloo process group tags
every operation with its own per-process counter (`next_tag()`), and a
send matches a receive only when the two counters agree. In a group of
more than 2 ranks, point-to-point traffic advances the counters of
different ranks differently (stage 1 receives from 0 with tag 0, then
sends to 2 with tag 1, while stage 2 waits for tag 0), so the second hop
hangs ("TIMEOUT ... unbound_buffer.cc"; measured with a 4-rank chain).
Fix: when fleet sets up a pipe group of more than 2 stages, a 2-rank group
is also created for every pair of adjacent stages (`pair_group`), and
`collectives.py` routes point-to-point calls on the big group through the
pair's group, where both counters advance together.
"""
from __future__ import annotations

import os

import paddle.distributed as dist
from paddle.base import core
from paddle.distributed import collective
from paddle.distributed.fleet.base.topology import HybridCommunicateGroup

from ..ports import HeldPort

STORE_TIMEOUT_S = 900
_KEY = "paddle_pangu/cpu_backend/gloo_group_store/{gid}"
_group_stores: list = []  # keep every per-group store (and the host's server thread) alive
_pair_groups: dict = {}  # frozenset({global rank, global rank}) -> 2-rank Group containing this process


def _local_host() -> str:
    return os.environ.get("PADDLE_CURRENT_ENDPOINT", "127.0.0.1:0").rsplit(":", 1)[0]


def group_store(job_store, rank: int, world_size: int, gid: int):
    """A TCP store private to group `gid`; its rank 0 hosts it and publishes host:port."""
    key = _KEY.format(gid=gid)
    if rank == 0:
        host = _local_host()
        with HeldPort(host) as held:  # nobody else is handed the port before the store listens on it
            job_store.set(key, f"{host}:{held.port}".encode())  # clients retry until the server below listens
            store = core.TCPStore(host, held.port, True, world_size, STORE_TIMEOUT_S)
    else:
        job_store.wait(key)
        host, port = bytes(job_store.get(key)).decode().rsplit(":", 1)
        store = core.TCPStore(host, int(port), False, world_size, STORE_TIMEOUT_S)
    _group_stores.append(store)
    return store


def make_new_process_group_impl(original):
    """Wrap `collective._new_process_group_impl` so gloo sub-groups rendezvous on `group_store`."""

    def new_process_group_impl(backend, store, rank, world_size, group_name, pg_options, group_id=0, **kwargs):
        if backend == "gloo" and group_id != 0 and world_size > 1:
            store = group_store(store, rank, world_size, group_id)
        return original(backend, store, rank, world_size, group_name, pg_options, group_id=group_id, **kwargs)

    return new_process_group_impl


def create_pair_groups(comm_lists: list[list[int]], my_rank: int) -> None:
    """A 2-rank group for every pair of neighbouring ranks in each list (ring order).

    Every process must call this with the same lists: `new_group` is collective.
    """
    for ranks in comm_lists:
        for a, b in zip(ranks, ranks[1:] + ranks[:1]):
            group = dist.new_group([a, b])
            if my_rank in (a, b):
                _pair_groups[frozenset((a, b))] = group


def pair_group(peer: int):
    """The 2-rank group of this process and global rank `peer`, or None."""
    return _pair_groups.get(frozenset((collective._get_global_env().rank, peer)))


def make_set_p2p_prev_next(original):
    """Wrap `HybridCommunicateGroup._set_p2p_prev_next` (runs on every rank when pp > 1)."""

    def set_p2p_prev_next(self):
        original(self)
        if self._pp_degree > 2:
            create_pair_groups(self._topo.get_comm_list("pipe"), self.global_rank)

    return set_p2p_prev_next


def patch_table() -> list[tuple[object, str, object]]:
    """(owner, attribute, new value) triples applied by `install()`."""
    return [
        (collective, "_new_process_group_impl", make_new_process_group_impl(collective._new_process_group_impl)),
        (HybridCommunicateGroup, "_set_p2p_prev_next",
         make_set_p2p_prev_next(HybridCommunicateGroup._set_p2p_prev_next)),
    ]
