"""One vs two kernel threads for a whole fused int8 / bf16 decode step, per batch size (issue 25).

    python tools/fused_threads_ab.py [--weights int8] [--batches 1,8] [--rounds 5] [--steps 16]

The `pangu bench generate` model shape (hidden 512, 4 layers, 8 heads, vocab 40000), a 32-token prompt per
row, then per round: `--steps` decode steps through the stepper `pangu generate` builds with the kernels on 1
thread, then the same steps (from the same cache) on 2 threads: interleaved, one process. Prints per batch the
median [min-max] over rounds of t1 / t2 (wall; > 1: two threads faster) and of the CPU seconds per step
(process time: what a second thread costs the machine), with the load average. A ratio, not a speed: the
machine is shared.
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

        def run(threads: int):
            set_threads(model, threads)
            cache, p, m, tok = cache0, pos[:, -1:], mask, logits.argmax(-1)[:, None]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                p, m = p + 1, np.concatenate([m, np.ones([batch, 1], "int64")], 1)
                out, cache = stepper(tok, p, m, cache)
                tok = out.argmax(-1)[:, None]
            return (time.perf_counter() - wall) / a.steps, (time.process_time() - cpu) / a.steps

        run(1), run(2)  # warm-up
        ratio, cpu1, cpu2, wall1 = [], [], [], []
        for _ in range(a.rounds):
            w1, c1 = run(1)
            w2, c2 = run(2)
            ratio.append(w1 / w2)
            cpu1.append(c1)
            cpu2.append(c2)
            wall1.append(w1)
        med = lambda v: f"{np.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"  # noqa: E731
        print(f"{a.weights} batch {batch}: t1/t2 {med(ratio)}; 1 thread {1e3 * np.median(wall1):.2f} ms/step; "
              f"CPU ms/step 1 thread {1e3 * np.median(cpu1):.2f}, 2 threads {1e3 * np.median(cpu2):.2f}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
