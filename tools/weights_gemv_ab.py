"""The tied head's linear (40000 x 512, the largest read per token) with fp32, int8 and bf16 weights, interleaved
in one process: per row count M (1, 8: decode; 64: prefill, the blocked GEMM) the median call time of each
and the same-run ratios fp32 / int8 and fp32 / bf16 (> 1: faster than fp32), with the load beside them. A
kernel microbenchmark, not a product number (`pangu bench generate` is that).

    python tools/weights_gemv_ab.py [ROUNDS]
"""
import os
import sys

import numpy as np
import paddle

from paddle_pangu import kernels
from paddle_pangu.bench.harness import interleave, pair_ratio
from paddle_pangu.inference.quantize import bf16_bits, quantize_rows

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
n, k, calls = 40000, 512, 10
rng = np.random.default_rng(0)
w = (rng.standard_normal((n, k)) * 0.02).astype("float32")  # [V, H], the embedding's layout
q, s = quantize_rows(w)
qt, st, bias = paddle.to_tensor(q), paddle.to_tensor(s), paddle.zeros([n])
bt = paddle.to_tensor(bf16_bits(w))
wt = paddle.to_tensor(w.T.copy())  # [H, V]: the layout the fp32 frozen head reads (inference.generation)
threads = kernels.threads()
for m in (1, 8, 64):
    x = paddle.randn([m, k])
    systems = {"fp32": lambda: paddle.matmul(x, wt) + bias,
               "int8": lambda: kernels.int8_linear(x, qt, st, bias, threads=threads),
               "bf16": lambda: kernels.bf16_linear(x, bt, bias, threads=threads)}
    runs = interleave(systems, rounds, calls)
    med = {name: float(np.median([r["wall_s"] for r in rs])) * 1e3 for name, rs in runs.items()}
    ratios = {f"fp32/{b}": pair_ratio(runs[b], runs["fp32"]).get("wall") for b in ("int8", "bf16")}
    loads = [r["load"] for rs in runs.values() for r in rs]
    print(f"M={m:<3} " + "  ".join(f"{name} {v:.3f} ms" for name, v in med.items()) + "  " +
          "  ".join(f"{name} {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]" if r else f"{name} -"
                    for name, r in ratios.items()) + f"  threads {threads}  load {min(loads):.1f}-{max(loads):.1f}",
          flush=True)
print(f"(rounds {rounds} x {calls} calls each; load = 1-minute os.getloadavg(); {os.cpu_count()} CPUs)")
