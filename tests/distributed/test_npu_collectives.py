"""The simulated npu's xccl collectives (paddle_pangu/devices/sim_npu/runtime.cc) on 3 real processes,
through paddle.distributed's xccl process group, against numpy.

The plugin's stated order: every rank reduces all ranks' buffers in rank order, ((x0 + x1) + x2);
fp32 / fp64 in the type, fp16 / bf16 accumulated in fp32 and rounded once (to nearest even), integers
in the type (wrapping), bool as or / and. Results are compared exactly (array_equal): they are
determined to the bit by that order. The check can fail: the other association x0 + (x1 + x2), or
rounding fp16 after each addition, differs from the stated result on these inputs (asserted too).
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import launch  # noqa: E402
from npu_collective_data import DTYPES, rank_input  # noqa: E402

pytestmark = pytest.mark.distributed
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "npu_collective_worker.py")
WORLD = 3


# a segment a killed job left behind: its creator pid cannot exist (above the largest pid_max, 2^22)
STALE_SEGMENT = "/dev/shm/pangu_npu_2147483646_deadbeef"


@pytest.fixture(scope="module")
def outs():
    with open(STALE_SEGMENT, "wb") as f:
        f.write(b"\0" * 4096)
    return launch(WORKER, nproc=WORLD, timeout=600, env={"PANGU_TEST_NPU": "1"}).outputs()


def test_segments_of_dead_jobs_are_removed_when_a_group_is_created(outs):
    assert not os.path.exists(STALE_SEGMENT)  # (the job's own segments: unlinked by rank 0 once all joined)


def _bf16(x32):
    """float32 -> nearest-even bfloat16, kept in float32."""
    bits = x32.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _expected(dtype, op):
    xs = [rank_input(dtype, r) for r in range(WORLD)]
    if dtype == "bool":
        combine = np.logical_or if op in ("sum", "max") else np.logical_and
    else:
        combine = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}[op]
    if dtype in ("float16", "bfloat16"):
        xs = [x.astype(np.float32) for x in xs]
    acc = xs[0]
    with np.errstate(over="ignore", invalid="ignore"):
        for x in xs[1:]:
            acc = combine(acc, x)
    if dtype == "float16":
        return acc.astype(np.float16)
    if dtype == "bfloat16":
        return _bf16(acc)
    return acc.astype(xs[0].dtype)


def test_every_rank_ran_on_npu_through_xccl(outs):
    assert [o["place"] for o in outs] == [f"npu:{r}" for r in range(WORLD)]
    assert all(o["backend"] == "XCCL" for o in outs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
def test_all_reduce_is_exact_in_the_stated_order(outs, dtype, op):
    want = _expected(dtype, op)
    for out in outs:
        got = out[f"all_reduce/{dtype}/{op}"]
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=f"{dtype} {op}")


def test_the_order_is_observable():
    """The exact checks above distinguish the stated order from its alternatives on these inputs."""
    x = [rank_input("float32", r) for r in range(WORLD)]
    assert not np.array_equal((x[0] + x[1]) + x[2], x[0] + (x[1] + x[2]))
    h = [rank_input("float16", r) for r in range(WORLD)]
    assert not np.array_equal(_expected("float16", "sum"), (h[0] + h[1]) + h[2])  # fp16 rounding at each add
    b = [rank_input("bfloat16", r) for r in range(WORLD)]
    assert not np.array_equal(_expected("bfloat16", "sum"), _bf16(_bf16(b[0] + b[1]) + b[2]))


def test_broadcast_reduce_gather_scatter_and_send_recv(outs):
    f = [rank_input("float32", r) for r in range(WORLD)]
    for r, out in enumerate(outs):
        np.testing.assert_array_equal(out["broadcast"], f[1])
        np.testing.assert_array_equal(out["all_gather"], np.stack(f))
        chunk = [fr * np.float32(r + 1) for fr in f]  # rank q's block r
        np.testing.assert_array_equal(out["reduce_scatter"], (chunk[0] + chunk[1]) + chunk[2])
        np.testing.assert_array_equal(out["sendrecv"], f[(r - 1) % WORLD] * np.float32(10))
        assert out["large_all_reduce_ok"] and out["large_recv_ok"]  # chunked through the 8 MB slots / 4 MB rings
    np.testing.assert_array_equal(outs[1]["reduce"], (f[0] + f[1]) + f[2])
