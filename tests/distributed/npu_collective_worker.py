"""Every xccl collective of the simulated npu, called through paddle.distributed on `npu` tensors
(ProcessGroupCustom -> the plugin's xccl_*), on deterministic per-rank inputs; each rank writes what it
received (launch_utils.write_output) and test_npu_collectives.py compares with numpy."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paddle_pangu import runtime  # noqa: E402

runtime.apply()  # PANGU_TEST_NPU=1: the plugin, before paddle

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402
from launch_utils import write_output  # noqa: E402
from npu_collective_data import DTYPES, rank_input  # noqa: E402

from paddle_pangu.parallel.device import DeviceInfo  # noqa: E402
from paddle_pangu.parallel.topology import collective_env  # noqa: E402


def main():
    rank, world = int(os.environ["PADDLE_TRAINER_ID"]), int(os.environ["PADDLE_TRAINERS_NUM"])
    collective_env(DeviceInfo("npu", "xccl", 8), rank)
    paddle.set_device(f"npu:{rank}")
    dist.init_parallel_env()
    out = {"place": str(paddle.get_device()), "backend": str(dist.get_backend())}

    def npu(a):
        t = paddle.to_tensor(a, place=paddle.CustomPlace("npu", rank))
        return t

    def host(t):
        return t.cast("float32").numpy() if t.dtype == paddle.bfloat16 else t.numpy()

    # (AVG is not reachable from Python on this build: paddle 3.3.1's all_reduce asks nccl_version() for it,
    # which a build without CUDA lacks; the plugin implements it as SUM / nranks)
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "prod": dist.ReduceOp.PROD}
    for dtype in DTYPES:
        x = rank_input(dtype, rank)
        for name, op in ops.items():
            t = npu(x)
            if dtype == "bfloat16":
                t = npu(x.astype(np.float32)).cast("bfloat16")
            dist.all_reduce(t, op=op)
            out[f"all_reduce/{dtype}/{name}"] = host(t)
    f = rank_input("float32", rank)
    t = npu(f)
    dist.broadcast(t, src=1)
    out["broadcast"] = host(t)
    t = npu(f)
    dist.reduce(t, dst=1, op=dist.ReduceOp.SUM)
    out["reduce"] = host(t)
    gathered = []
    dist.all_gather(gathered, npu(f))
    out["all_gather"] = np.stack([host(g) for g in gathered])
    big = np.concatenate([rank_input("float32", rank) * (k + 1) for k in range(world)])
    t = npu(np.zeros_like(f))
    dist.reduce_scatter(t, [npu(c) for c in np.split(big, world)])
    out["reduce_scatter"] = host(t)
    # send / recv around the ring in one batch (every rank sends before it receives)
    recv = npu(np.zeros_like(f))
    tasks = dist.batch_isend_irecv([dist.P2POp(dist.isend, npu(f * 10), (rank + 1) % world),
                                    dist.P2POp(dist.irecv, recv, (rank - 1) % world)])
    for task in tasks:
        task.wait()
    out["sendrecv"] = host(recv)
    # a message larger than the plugin's 8 MB staging slot and 4 MB ring: chunked
    large = (np.arange(3_000_000, dtype=np.float32) % 977) * (rank + 1)
    t = npu(large)
    dist.all_reduce(t)
    total = sum(k + 1 for k in range(world))
    out["large_all_reduce_ok"] = bool(np.array_equal(host(t), (np.arange(3_000_000, dtype=np.float32) % 977) * total))
    recv = npu(np.zeros_like(large))
    if rank == 0:
        dist.send(npu(large), dst=1)
    elif rank == 1:
        dist.recv(recv, src=0)
    out["large_recv_ok"] = bool(rank != 1 or np.array_equal(host(recv), large / 2))
    write_output(out)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
