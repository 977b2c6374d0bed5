"""paddle_pangu.parallel.cpu_backend: fleet mp / pp / sharding on CPU gloo.

The multi-process tests launch `_cpu_backend_worker.py` on 2 or 4 CPU processes;
the worker computes the plain single-process reference from the same
weights and batch in the same run, and these tests compare the two.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_pangu.parallel import cpu_backend
from launch_utils import DistributedRunError, launch  # pytest puts this directory on sys.path

WORKER = Path(__file__).with_name("_cpu_backend_worker.py")
ATOL, RTOL = 2e-5, 1e-4

# how each parameter of the mp worker is sharded: axis, or None = replicated
MP_SPLIT_AXIS = {"emb.weight": 0, "col1.weight": 1, "col1.bias": 0, "row1.weight": 0, "row1.bias": None,
                 "col2.weight": 1, "col2.bias": 0, "row2.weight": 0, "row2.bias": None,
                 "head.weight": 1, "head.bias": 0}


def run_case(case: str, nproc: int = 2, timeout: float = 240) -> list:
    return launch(WORKER, nproc=nproc, args=["--case", case], timeout=timeout).outputs()


def assert_close(actual, expected, what: str):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


# ------------------------------------------------------------ single process
def test_install_is_noop_when_backend_is_not_cpu(monkeypatch):
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:0")
    assert cpu_backend.install() is False
    assert not cpu_backend.is_active()


def test_install_is_noop_when_fleet_groups_are_not_gloo():
    class FakeGroup:
        def __init__(self, backend, nranks):
            self.backend, self.nranks = backend, nranks

    class FakeHcg:
        def get_model_parallel_group(self):
            return FakeGroup("NCCL", 2)

        def get_pipe_parallel_group(self):
            return FakeGroup("GLOO", 2)

        def get_data_parallel_group(self):
            return FakeGroup("NCCL", 1)  # 1-rank groups are ignored

    assert cpu_backend.backend_is_cpu_gloo(FakeHcg()) is False
    assert cpu_backend.install(FakeHcg()) is False and not cpu_backend.is_active()


@pytest.fixture
def cpu_placement(monkeypatch):
    """install() is a no-op off CPU (tested above): give it a CPU placement on any build (GPU / NPU too)."""
    if not paddle.get_device().startswith("cpu"):
        monkeypatch.setattr(paddle, "get_device", lambda: "cpu")


def test_version_check_names_versions_and_escape_hatch(monkeypatch, cpu_placement):
    monkeypatch.setattr(paddle, "__version__", "9.9.9")
    with pytest.raises(cpu_backend.CpuBackendError) as err:
        cpu_backend.install()
    message = str(err.value)
    assert "9.9.9" in message and "3.3.1" in message and "force=True" in message
    assert not cpu_backend.is_active()
    try:
        assert cpu_backend.install(force=True) is True and cpu_backend.is_active()
    finally:
        cpu_backend.uninstall()


def test_install_uninstall_restores_paddle(monkeypatch, cpu_placement):
    from paddle.base import core
    from paddle.distributed.fleet.layers.mpu import mp_ops

    original = mp_ops._c_identity
    assert "all_reduce_on_calc_stream" not in core.ProcessGroupGloo.__dict__
    try:
        assert cpu_backend.install() is True  # single process, CPU: active
        assert cpu_backend.install() is True and cpu_backend.is_active()
        assert mp_ops._c_identity is not original
        assert "all_reduce_on_calc_stream" in core.ProcessGroupGloo.__dict__
    finally:
        cpu_backend.uninstall()
    assert not cpu_backend.is_active()
    assert mp_ops._c_identity is original
    assert "all_reduce_on_calc_stream" not in core.ProcessGroupGloo.__dict__


@pytest.mark.distributed
def test_failed_launch_reports_each_rank(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text("import os\nraise SystemExit('rank ' + os.environ['PADDLE_TRAINER_ID'] + ' exploded')\n")
    with pytest.raises(DistributedRunError) as err:
        launch(script, nproc=2, timeout=120)
    assert "rank 0 exploded" in str(err.value) and "rank 1 exploded" in str(err.value)


# ------------------------------------------------------------ multi process
@pytest.mark.distributed
def test_mp2_fleet_layers_match_plain_layers():
    outs = run_case("mp")
    assert [o["rank"] for o in outs] == [0, 1]
    for out in outs:
        assert_close(out["loss"], out["ref_loss"], "mp2 loss vs single process")
    for name, axis in MP_SPLIT_AXIS.items():
        ref = outs[0]["ref_grads"][name]
        if axis is None:
            got = outs[0]["grads"][name]
            assert_close(outs[1]["grads"][name], got, f"replicated grad {name} differs between ranks")
        else:
            got = np.concatenate([o["grads"][name] for o in outs], axis=axis)
        assert_close(got, ref, f"mp2 grad of {name} (gathered) vs single process")


def gather_pipeline_params(outs) -> dict:
    """name -> full value, concatenating mp shards (in mp-rank order) on their split axis."""
    by_name: dict = {}
    for out in sorted(outs, key=lambda o: o["mp_rank"]):
        for name, value in out["params"].items():
            by_name.setdefault((out["stage"], name), []).append((out["split_axis"][name], value))
    full = {}
    for (stage, name), parts in by_name.items():
        axis = parts[0][0]
        if axis is None or len(parts) == 1:
            for _, value in parts[1:]:
                assert_close(value, parts[0][1], f"replicated {name} differs across mp ranks of stage {stage}")
            value = parts[0][1]
        else:
            value = np.concatenate([v for _, v in parts], axis=axis)
        if name in full:  # tied embedding: first and last stage must agree
            assert_close(value, full[name], f"shared {name} differs between pipeline stages")
        full[name] = value
    return full


def check_pipeline_run(outs, expected_ranks, what):
    """expected_ranks: sorted (dp_rank, stage, mp_rank) of the run's processes."""
    assert sorted((o["dp_rank"], o["stage"], o["mp_rank"]) for o in outs) == expected_ranks
    dp_ranks = sorted({o["dp_rank"] for o in outs})
    ref_params = outs[0]["ref_params"]
    for out in outs:  # each dp rank trains on its slice: the mean over dp ranks is the full-batch loss
        same_place = [o for o in outs if (o["stage"], o["mp_rank"]) == (out["stage"], out["mp_rank"])]
        assert len(same_place) == len(dp_ranks) and len(out["losses"]) == 2
        assert_close(np.mean([o["losses"] for o in same_place], axis=0), out["ref_losses"],
                     f"{what} losses (stage {out['stage']}) vs single process")
        assert_close(np.mean([o["eval_loss"] for o in same_place]), out["ref_eval_loss"],
                     f"{what} eval_batch loss vs single process")
    for dp_rank in dp_ranks:
        full = gather_pipeline_params([o for o in outs if o["dp_rank"] == dp_rank])
        assert set(full) == set(ref_params), "the stages together must hold every parameter"
        for name, value in full.items():
            assert_close(value, ref_params[name], f"{what} dp rank {dp_rank}: parameter {name} after 2 steps")


@pytest.mark.distributed
def test_pp2_train_batch_matches_single_process():
    """1F1B with 2 micro-batches, tuple activations carrying int64 position ids, tied embedding."""
    outs = run_case("pp")
    check_pipeline_run(outs, [(0, 0, 0), (0, 1, 0)], "pp2")
    assert all("shared_layers.embed.weight" in o["params"] for o in outs)


FOUR_PROC_LAYOUTS = {  # layout -> (worker args, sorted (data replica, stage, mp rank) of the 4 processes)
    "mp2_pp2": (["--mp", 2], [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]),
    "dp2_pp2": (["--dp", 2], [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]),
    "sharding2_stage2_pp2": (["--sharding", 2, "--stage", 2], [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]),
    "pp4": (["--pp", 4], [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0)]),
}


@pytest.mark.distributed
@pytest.mark.parametrize("layout", sorted(FOUR_PROC_LAYOUTS))
def test_4proc_pipeline_matches_single_process(layout):
    """mp2 x pp2: vocab-parallel tied embedding, column/row blocks and parallel CE inside 1F1B;
    dp2 x pp2: gradient all-reduce across pipeline replicas; sharding stage 2 x pp2:
    reduce-scattered gradients per stage; pp4: p2p between middle stages (pair groups).
    All need fleet.init to create several gloo groups at once (cpu_backend/groups.py)."""
    args, expected = FOUR_PROC_LAYOUTS[layout]
    outs = launch(WORKER, nproc=4, args=["--case", "pp", *args], timeout=360).outputs()
    check_pipeline_run(outs, expected, layout)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, 2])
def test_sharding2_matches_single_process(stage):
    """Stage 1 = DygraphShardingOptimizer; stage 2 = DygraphShardingOptimizerV2 (split_param, reduce-scatter)."""
    outs = launch(WORKER, nproc=2, args=["--case", "sharding", "--stage", stage, "--steps", 3], timeout=240).outputs()
    assert sorted(o["rank"] for o in outs) == [0, 1]
    # each rank trains on its half of the batch: the mean of the two local losses is the full-batch loss
    mean_losses = np.mean([o["losses"] for o in outs], axis=0)
    assert_close(mean_losses, outs[0]["ref_losses"], f"sharding stage {stage} losses vs single process")
    for out in outs:
        for name, value in out["params"].items():
            assert_close(value, out["ref_params"][name], f"stage {stage} rank {out['rank']} {name} after 3 AdamW steps")



class _LocalGroup:
    """Stand-in for a 1-rank gloo group: collectives leave tensors unchanged."""

    rank, nranks = 0, 1

    class process_group:  # noqa: N801 - mimics Group.process_group
        @staticmethod
        def all_reduce(tensor, op, sync_op):
            return None


def test_vocab_parallel_cross_entropy_pylayer_matches_plain_on_one_shard():
    from paddle_pangu.parallel.cpu_backend.mp_ops import VocabParallelCrossEntropy

    rng = np.random.RandomState(0)
    logits = paddle.to_tensor(rng.standard_normal((3, 5, 7)).astype("float32"), stop_gradient=False)
    labels = paddle.to_tensor(rng.randint(0, 7, size=(3, 5, 1)).astype("int64"))
    labels[0, 0, 0] = -100
    loss, softmax = VocabParallelCrossEntropy.apply(logits, labels, _LocalGroup, -100)
    (loss * paddle.arange(15, dtype="float32").reshape([3, 5, 1])).sum().backward()  # non-uniform dloss
    got_loss, got_grad = loss.numpy(), logits.grad.numpy()
    logits.clear_gradient()
    ref = paddle.nn.functional.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    (ref * paddle.arange(15, dtype="float32").reshape([3, 5, 1])).sum().backward()
    assert_close(got_loss, ref.numpy(), "vocab-parallel CE loss on one shard vs F.cross_entropy")
    assert_close(got_grad, logits.grad.numpy(), "vocab-parallel CE grad on one shard vs F.cross_entropy")
    assert_close(softmax.numpy(), paddle.nn.functional.softmax(logits, -1).numpy(), "softmax output")


@pytest.mark.distributed
def test_gloo_calc_stream_collectives_and_emulated_reductions():
    outs = run_case("collectives")
    x = [np.arange(4, dtype="float32") + 10 * r for r in range(2)]  # worker's rank_tensor(r)
    total = x[0] + x[1]
    for out in sorted(outs, key=lambda o: o["rank"]):
        r = out["rank"]
        assert_close(out["all_reduce_max"], np.maximum(x[0], x[1]), "all_reduce_on_calc_stream(MAX)")
        assert_close(out["all_gather_into_tensor"], np.concatenate(x), "all_gather_into_tensor_on_calc_stream")
        assert_close(np.stack(out["all_gather_list"]), np.stack(x), "all_gather_on_calc_stream")
        assert_close(out["broadcast_from_1"], x[1], "broadcast_on_calc_stream")
        assert_close(out["send_recv_0_to_1"], x[0], "send/recv_on_calc_stream")
        # only the destination is written; the other rank's tensor is left as it was (as with NCCL)
        assert_close(out["reduce_to_0"], total if r == 0 else x[r], "reduce_on_calc_stream")
        assert_close(out["reduce_scatter_tensor"], total[2 * r:2 * r + 2], "reduce_scatter_tensor_on_calc_stream")
        assert_close(out["reduce_scatter_list"], total[2 * r:2 * r + 2], "reduce_scatter (list form)")
