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
    """A master TCPStore on a port no other process can take before it binds.

    paddle's TCPStore cannot bind port 0 (it insists on the port it was given) and aborts the process
    when the port is in use, so "bind 0, release, reuse" races with any process binding port 0 in
    between. The kernel hands out port-0 binds from ip_local_port_range only, so a free port picked
    outside that range (checked by binding it) can be lost only to a process naming it explicitly.
    """
    import random
    import socket

    from paddle.base import core

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        low = 32768  # Linux default
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store's listener does
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return core.TCPStore("127.0.0.1", port, True, 1, 60), port
    raise AssertionError("no free port below the ephemeral range")


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
