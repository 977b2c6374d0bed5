"""Where one int8 / bf16 / fp32 dynamic decode step spends its time (issue 25): per component, per step.

    python tools/profile_decode.py --weights int8 --batch 1 --steps 64

Builds the benchmark's model (`pangu bench generate` shape: hidden 512, 4 layers, 8 heads, vocab 40000),
prefills a 32-token prompt, then runs `--steps` decode steps through the stepper `pangu generate` uses and
reports: the whole step (stepper call, incl. logits -> numpy), the sampling pick (BatchDecoder.step minus
the model), and, from paddle's per-op host timers (cProfile over the Python frames), the time inside each
model component. Times are wall-clock on a shared machine: the load average is printed beside them.
Fused decode steps (inference/fused_decode.py, the default for int8 / bf16) show one entry per kind of fused
layer call (blocks, the query layer) beside the head's kernel.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="int8")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=40000)
    ap.add_argument("--cprofile", type=int, default=25, help="rows of the cProfile table (0: none)")
    a = ap.parse_args()

    import paddle

    from paddle_pangu.bench.decode_bench import pangu_model
    from paddle_pangu.bench.train_bench import Shape
    from paddle_pangu.inference.decoding import BatchDecoder, Row
    from paddle_pangu.inference.generation import DygraphStepper
    from paddle_pangu.inference.quantize import quantize_model
    from paddle_pangu.inference.sampling import SamplingConfig

    shape = Shape(hidden=a.hidden, layers=a.layers, heads=a.heads, ffn=4 * a.hidden, vocab=a.vocab,
                  seq=a.prompt_len, batch=a.batch)
    model = quantize_model(pangu_model(shape, a.prompt_len + a.steps + 8), a.weights)
    stepper = DygraphStepper(model, frozen=True)
    rng = np.random.default_rng(1)
    prompts = [list(map(int, rng.integers(10, a.vocab, a.prompt_len))) for _ in range(a.batch)]
    cfg = SamplingConfig(max_new_tokens=a.steps + 1, eos_token_id=-1)

    model_time = []
    kernel_ms: dict = {}  # (N, K) of each int8 / bf16 layer -> total seconds of its kernel calls
    from paddle_pangu.inference import quantize as qz

    for name in ("_int8_linear", "_bf16_linear"):
        inner = getattr(qz, name)

        def wrapped(x, w, *rest, _inner=inner):
            t = time.perf_counter()
            out = _inner(x, w, *rest)
            key = tuple(w.shape)
            kernel_ms[key] = kernel_ms.get(key, 0.0) + time.perf_counter() - t
            return out

        setattr(qz, name, wrapped)
    from paddle_pangu import kernels

    for name in ("int8_linear_cat", "bf16_linear_cat"):  # a decode step's q / k / v (or k / v) in one call
        inner = getattr(kernels, name, None)
        if inner is None:  # an older package (the before / after comparison runs this tool on both)
            continue

        def wrapped_cat(x, ws, *rest, _inner=inner):
            t = time.perf_counter()
            out = _inner(x, ws, *rest)
            key = ("cat",) + tuple(tuple(w.shape) for w in ws)
            kernel_ms[key] = kernel_ms.get(key, 0.0) + time.perf_counter() - t
            return out

        setattr(kernels, name, wrapped_cat)

    for name in ("int8_decode_layer_", "bf16_decode_layer_"):  # the fused decode layer: one call per layer
        inner = getattr(kernels, name, None)
        if inner is None:  # a package before the fused layer
            continue

        def wrapped_layer(x, query, norms, *rest, _inner=inner):
            t = time.perf_counter()
            _inner(x, query, norms, *rest)
            key = ("fused layer", "query" if rest[-2] else "block", tuple(x.shape))
            kernel_ms[key] = kernel_ms.get(key, 0.0) + time.perf_counter() - t

        setattr(kernels, name, wrapped_layer)

    def timed(*args):
        t = time.perf_counter()
        out = stepper(*args)
        model_time.append(time.perf_counter() - t)
        return out

    for warm in (True, False):
        dec = BatchDecoder(timed, model.config)
        dec.add([Row(p, cfg) for p in prompts])
        model_time.clear()
        kernel_ms.clear()
        prof = cProfile.Profile() if not warm and a.cprofile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        for _ in range(a.steps):
            dec.step()
        if prof:
            prof.disable()
        total = time.perf_counter() - t0
    step_ms = 1e3 * total / a.steps
    model_ms = 1e3 * sum(model_time) / len(model_time)
    print(f"weights {a.weights} batch {a.batch}: {step_ms:.2f} ms / step, model {model_ms:.2f} ms, "
          f"sampling + loop {step_ms - model_ms:.2f} ms; load {os.getloadavg()[0]:.2f}; "
          f"threads MKL={os.environ.get('MKL_NUM_THREADS')}")
    for key, sec in sorted(kernel_ms.items(), key=lambda kv: -kv[1]):
        print(f"  kernel weight {key}: {1e3 * sec / a.steps:.3f} ms / step")
    print(f"  kernels total {1e3 * sum(kernel_ms.values()) / a.steps:.3f} ms / step")
    if prof:
        stats = pstats.Stats(prof).stats  # {(file, line, name): (primitive calls, calls, tottime, cumtime, callers)}
        # C entry points: the generated op functions and the C Tensor methods (slicing, numpy); the operators
        # (+ - *: C slots) are invisible to cProfile: ~5 per layer more
        ops = {k[2]: v[1] for k, v in stats.items()
               if k[0] == "~" and ("libpaddle.pir.ops." in k[2] or "Tensor' objects" in k[2])}
        names = {n: n.split("ops.")[-1].split("'")[1 if "Tensor'" in n else 0].rstrip(">}") for n in ops}
        listing = ", ".join(f"{names[n]} {c / a.steps:g}" for n, c in sorted(ops.items(), key=lambda kv: -kv[1]))
        print(f"  Paddle ops dispatched: {sum(ops.values()) / a.steps:.1f} per step ({listing})")
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.cprofile)


if __name__ == "__main__":
    main()
