"""The fused decode layer against the op-by-op path, on 1 and 2 kernel threads, per batch size (issue 25).

    python tools/fused_threads_ab.py [--weights int8] [--batches 1,8] [--rounds 5] [--steps 16]

The `pangu bench generate` model shape (hidden 512, 4 layers, 8 heads, vocab 40000), a 32-token prompt per
row, then per round four runs of `--steps` decode steps from the same prefilled cache through the stepper
`pangu generate` builds: op-by-op on 1 thread, op-by-op on 2, fused on 1, fused on 2 (interleaved, one
process). Prints per batch and configuration the median ms per step (wall) and CPU ms per step (process time:
what a second thread costs the machine), and same-round ratios, median [min-max] over rounds: general / fused
at each thread count and t1 / t2 of the fused step (> 1: the second is faster). The load average beside them:
the machine is shared, so read the ratios, not the speeds.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="int8")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    a = ap.parse_args()

    from paddle_pangu.bench.decode_bench import pangu_model
    from paddle_pangu.bench.train_bench import Shape
    from paddle_pangu.inference.fused_decode import set_fused_decode
    from paddle_pangu.inference.generation import DygraphStepper
    from paddle_pangu.inference.quantize import quantize_model, set_threads

    for batch in (int(b) for b in a.batches.split(",")):
        shape = Shape(hidden=512, layers=4, heads=8, ffn=2048, vocab=40000, seq=32, batch=batch)
        model = quantize_model(pangu_model(shape, 32 + a.steps + 8), a.weights)
        stepper = DygraphStepper(model, frozen=True)
        rng = np.random.default_rng(1)
        ids = rng.integers(10, 40000, (batch, 32))
        mask = np.ones([batch, 32], "int64")
        pos = np.tile(np.arange(32), (batch, 1))
        logits, cache0 = stepper(ids, pos, mask, None)

        def run(fused: bool, threads: int):
            set_threads(model, threads)
            previous = set_fused_decode(fused)
            cache, p, m, tok = cache0, pos[:, -1:], mask, logits.argmax(-1)[:, None]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                p, m = p + 1, np.concatenate([m, np.ones([batch, 1], "int64")], 1)
                out, cache = stepper(tok, p, m, cache)
                tok = out.argmax(-1)[:, None]
            wall, cpu = (time.perf_counter() - wall) / a.steps, (time.process_time() - cpu) / a.steps
            set_fused_decode(previous)
            return wall, cpu

        configs = [(False, 1), (False, 2), (True, 1), (True, 2)]
        for c in configs:  # warm-up
            run(*c)
        times = {c: [] for c in configs}
        loads = []
        for _ in range(a.rounds):
            for c in configs:
                times[c].append(run(*c))
            loads.append(os.getloadavg()[0])
        med = lambda v: f"{np.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"  # noqa: E731
        wall = {c: [w for w, _ in times[c]] for c in configs}
        for fused, threads in configs:
            w, cpu = wall[(fused, threads)], [c for _, c in times[(fused, threads)]]
            print(f"{a.weights} batch {batch} {'fused' if fused else 'op-by-op'} {threads} thread(s): "
                  f"{1e3 * np.median(w):.2f} ms/step, CPU {1e3 * np.median(cpu):.2f} ms/step")
        for threads in (1, 2):
            r = [g / f for g, f in zip(wall[(False, threads)], wall[(True, threads)])]
            print(f"  op-by-op / fused, {threads} thread(s): {med(r)}")
        r = [x / y for x, y in zip(wall[(True, 1)], wall[(True, 2)])]
        print(f"  fused t1 / t2: {med(r)}; load {min(loads):.2f}-{max(loads):.2f}", flush=True)


if __name__ == "__main__":
    main()
