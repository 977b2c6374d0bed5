"""One vs two kernel threads per int8 GEMV shape (issue 25: is a parallel region worth it at this size?).

    python tools/int8_threads_ab.py [rounds]

For each weight [N, K] of the bench shape (hidden 512: q/k/v/out 512 x 512, fc_in 2048 x 512, fc_out
512 x 2048, the head 40000 x 512) and batch 1 / 8: `rounds` rounds, each timing 50 calls with 1 thread then
50 with 2 (interleaved, same process); prints the median [min-max] of the per-round ratio t1 / t2 (> 1: two
threads faster) and the load average. A ratio, not a speed: the machine is shared.
"""
import os
import sys
import time

import numpy as np
import paddle

from paddle_pangu import kernels
from paddle_pangu.inference.quantize import quantize_rows


def per_call(f, n=50):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def main(rounds: int) -> None:
    rng = np.random.default_rng(0)
    for n, k in ((512, 512), (2048, 512), (512, 2048), (40000, 512)):
        q, s = quantize_rows(rng.standard_normal((n, k)).astype("float32"))
        qt, st, bt = paddle.to_tensor(q), paddle.to_tensor(s), paddle.zeros([n])
        for m in (1, 8):
            x = paddle.randn([m, k])
            calls = {t: (lambda t=t: kernels.int8_linear(x, qt, st, bt, threads=t)) for t in (1, 2)}
            for f in calls.values():
                f()
            ratios, t1s = [], []
            for _ in range(rounds):
                t1 = per_call(calls[1])
                t2 = per_call(calls[2])
                ratios.append(t1 / t2)
                t1s.append(t1)
            print(f"[{n}, {k}] batch {m}: t1/t2 median {np.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"
                  f"  (1 thread {1e6 * np.median(t1s):.0f} us/call)  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
