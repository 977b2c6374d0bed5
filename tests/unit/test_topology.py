"""Single-process topology, the model-building API and the pipeline stage split (no launcher)."""
import numpy as np
import paddle
import pytest

from paddle_pangu.config import get_preset
from paddle_pangu.config.parallel_config import ParallelConfig, ParallelConfigError
from paddle_pangu.model import PanGuForCausalLM
from paddle_pangu.model.modeling_pp import build_model, desc_segments, gather_plain_state_dict, load_plain_state_dict
from paddle_pangu.parallel.context import ParallelContext
from paddle_pangu.parallel.topology import init_topology


@pytest.fixture
def cfg():
    return get_preset("tiny", num_layers=4, vocab_size=256, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_single_process_needs_no_fleet(cfg, monkeypatch):
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    topo = init_topology(ParallelConfig(seed=7), "cpu", model_config=cfg)
    assert (topo.world_size, topo.hcg, topo.cpu_backend_active) == (1, None, False)
    assert topo.is_first_stage and topo.is_last_stage and topo.group("mp") is None
    assert topo.context == ParallelContext()  # plain: the model built from it has no split layers
    a = paddle.rand([3])
    init_topology(ParallelConfig(seed=7), "cpu", model_config=cfg)
    np.testing.assert_array_equal(a.numpy(), paddle.rand([3]).numpy())  # global seed applied
    with pytest.raises(ValueError, match="expected one of"):
        topo.group("tp")


def test_layout_errors_before_any_group(cfg, monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")  # as under a 2-process launch
    with pytest.raises(ParallelConfigError, match="= 4 but the job has world_size=2"):
        init_topology(ParallelConfig(mp_degree=2, dp_degree=2), "cpu", model_config=cfg)
    with pytest.raises(ParallelConfigError, match="needs world_size 1"):
        init_topology(ParallelConfig(), "cpu")
    with pytest.raises(ParallelConfigError, match="num_layers=3"):
        init_topology(ParallelConfig(pp_degree=2, accumulate_steps=2), "cpu", model_config=get_preset("tiny"))


@pytest.mark.parametrize("layers, pp, expected", [
    (4, 2, [0, 3, 7]),      # stage 0: emb + 2 blocks | stage 1: block 2, final LN, query layer, head
    (4, 4, [0, 2, 3, 4, 7]),  # last stage: final LN + query layer + head only
    (64, 16, [0] + [4 * s + 1 for s in range(1, 16)] + [67]),  # REF 200B: 16 stages x 4 layers
])
def test_desc_segments(layers, pp, expected):
    assert desc_segments(layers, pp) == expected


def test_build_load_gather_single_process(cfg, monkeypatch):
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    pc = ParallelConfig(recompute_interval=2)
    topo = init_topology(pc, "cpu", model_config=cfg)
    model = build_model(cfg, pc, topo)
    assert isinstance(model, PanGuForCausalLM) and model.pangu.recompute_interval == 2
    paddle.seed(1)
    source = {k: v.numpy() for k, v in PanGuForCausalLM(cfg).state_dict().items()}
    load_plain_state_dict(model, source, topo)
    gathered = gather_plain_state_dict(model, topo)
    assert sorted(gathered) == sorted(source)
    for k in source:
        np.testing.assert_array_equal(gathered[k], source[k])
    with pytest.raises(KeyError, match="missing"):
        load_plain_state_dict(model, {k: v for k, v in source.items() if "final_layernorm" not in k}, topo)
    bad = dict(source, **{"pangu.final_layernorm.bias": np.zeros([3], "float32")})
    with pytest.raises(ValueError, match="final_layernorm.bias has shape"):
        load_plain_state_dict(model, bad, topo)


def _job_store():
    """A master TCPStore on a port held from choice to bind (paddle_pangu/parallel/ports.py): paddle's
    TCPStore refuses port 0 and aborts the process when its port is taken."""
    from paddle.base import core

    from paddle_pangu.parallel.ports import HeldPort

    with HeldPort("127.0.0.1") as held:
        return core.TCPStore("127.0.0.1", held.port, True, 1, 60), held.port


def test_a_held_port_is_refused_to_others_and_handed_to_the_store():
    """While held, neither an explicit bind nor the kernel's port-0 choice gets the port (both would make
    the store abort the process); the TCPStore, which binds with SO_REUSEADDR, does, and keeps it after."""
    import socket

    from paddle.base import core

    from paddle_pangu.parallel.ports import HeldPort

    held = HeldPort("127.0.0.1")
    try:
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", held.port))
        taken = []
        for _ in range(64):  # the kernel's port-0 picks skip it (sockets kept open so each pick is new)
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            taken.append(s)
        assert held.port not in {s.getsockname()[1] for s in taken}
        for s in taken:
            s.close()
        store = core.TCPStore("127.0.0.1", held.port, True, 1, 60)
    finally:
        held.release()
    with socket.socket() as other, pytest.raises(OSError):  # now the store's listener owns the port
        other.bind(("127.0.0.1", held.port))
    client = core.TCPStore("127.0.0.1", held.port, False, 1, 60)
    store.set("k", "v")
    assert bytes(client.get("k")) == b"v"


def test_gloo_group_store_publishes_its_address(monkeypatch):
    from paddle.distributed import collective

    from paddle_pangu.parallel import cpu_backend
    from paddle_pangu.parallel.cpu_backend import groups

    if not paddle.get_device().startswith("cpu"):  # install() is a CPU-only no-op; any build may run this
        monkeypatch.setattr(paddle, "get_device", lambda: "cpu")
    job, port = _job_store()
    store = groups.group_store(job, rank=0, world_size=1, gid=12)
    host, group_port = bytes(job.get(groups._KEY.format(gid=12))).decode().rsplit(":", 1)
    assert host == "127.0.0.1" and int(group_port) not in (0, port)
    store.set("k", "v")
    assert bytes(store.get("k")) == b"v"
    original = collective._new_process_group_impl
    try:
        cpu_backend.install()  # before fleet.init: patches group creation
        assert collective._new_process_group_impl is not original
    finally:
        cpu_backend.uninstall()
    assert collective._new_process_group_impl is original
