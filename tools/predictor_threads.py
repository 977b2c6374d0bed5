"""Predictor threads per regime (issue 25; docs/INT8.md): the fp32 and int8 exported predictors at 1 and 2 math
threads, batch 1 and 8, interleaved rounds; tok/s and tok/CPU-s (hidden 512, 4 layers, vocab 40000, prompt 32 +
32 greedy).

    python tools/predictor_threads.py [ROUNDS]
"""
import json, os, shutil, sys, tempfile
from paddle_pangu.bench.decode_bench import pangu_model, stepper_fn, _prompts
from paddle_pangu.bench.harness import interleave, summarize
from paddle_pangu.bench.train_bench import Shape
from paddle_pangu.inference.export import export_model, InferenceStepper
from paddle_pangu.inference.quantize import quantize_model
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
shape = Shape(hidden=512, layers=4, heads=8, ffn=2048, vocab=40000, seq=256, batch=1)
tmp = tempfile.mkdtemp()
export_model(pangu_model(shape, 256), tmp + "/fp32")
export_model(quantize_model(pangu_model(shape, 256), "int8"), tmp + "/int8", weights="int8")
out = {"load": os.getloadavg()[0]}
for batch in (1, 8):
    prompts = _prompts(shape, batch, 32)
    fns = {}
    for w in ("fp32", "int8"):
        for t in (1, 2):
            fns[f"{w}_t{t}"] = stepper_fn(InferenceStepper(f"{tmp}/{w}", threads=t), prompts, 32)
    for f in fns.values(): f()
    runs = interleave(fns, rounds)
    for n, r in runs.items():
        s = summarize(r, batch * 32)
        out[f"b{batch}_{n}"] = {"tok_s": round(s["tokens_per_s"], 1), "tok_cpu_s": round(s["tokens_per_cpu_s"], 1),
                                "load": s["load"]}
        print(f"batch {batch} {n}: {s['tokens_per_s']:.1f} tok/s {s['tokens_per_cpu_s']:.1f} tok/CPU-s load {s['load']}", flush=True)
print(json.dumps(out))
shutil.rmtree(tmp)  # the two exports (~250 MB)
