"""The int8 GEMV against fp32 paddle.matmul, one shape at a time (best of 5 x 20 calls, same process; a
microbenchmark for kernel work, not a product number: see `pangu bench generate` for those).

    python tools/int8_gemv_micro.py
"""
import time, os, numpy as np, paddle
from paddle_pangu import kernels
from paddle_pangu.inference.quantize import quantize_rows
rng = np.random.default_rng(0)
def bench(f, n=20):
    f(); best = 1e9
    for _ in range(5):
        t = time.perf_counter(); [f() for _ in range(n)]; best = min(best, (time.perf_counter() - t) / n)
    return best
for (N, K) in ((8, 16), (512, 512), (2048, 512), (40000, 512)):
    w = rng.standard_normal((N, K)).astype("float32"); q, s = quantize_rows(w)
    qt, st, bt = paddle.to_tensor(q), paddle.to_tensor(s), paddle.zeros([N]); wt = paddle.to_tensor(w.T.copy())
    x = paddle.randn([1, K])
    r = {f"int8_t{t}": bench(lambda: kernels.int8_linear(x, qt, st, bt, threads=t)) for t in (1, 2)}
    r["fp32"] = bench(lambda: paddle.matmul(x, wt))
    print(N, K, {k: f"{v*1e6:.0f}us {N*K*(1 if 'int8' in k else 4)/v/1e9:.1f}GB/s" for k, v in r.items()}, f"load {os.getloadavg()[0]:.1f}", flush=True)
