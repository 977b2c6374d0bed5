"""Accuracy of `--weights int8` and `--weights bf16` against fp32 on a trained model (issue 25; numbers in
docs/INT8.md). Each figure below is reported per mode (`modes`: int8, bf16).

    python tools/int8_accuracy.py --model runs/mini_cpu_mp2/final_model --data data/peoples_daily

Reports, on the prepared dataset's `valid` split (held out from training):
- perplexity with fp32 and with int8 weights (same windows, evaluation.scoring.perplexity) and their ratio;
- the max |logit difference| over every position of a fixed set of prompts (the first --prompt-len tokens
  of --prompts validation windows), absolute and relative to the largest |fp32 logit|;
- greedy agreement: per prompt, the number of --new-tokens greedy tokens that agree before the first
  divergence (mean, min, and how many prompts agree all the way).
A model saved per rank (mp / pp > 1) is merged to one rank first (convert.reshard), as `pangu export` does.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

MODES = ("int8", "bf16")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepared dataset directory (pangu prepare-data)")
    p.add_argument("--samples", type=int, default=64, help="validation windows for perplexity")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import paddle

    from paddle_pangu.convert.reshard import detect_layout, reshard
    from paddle_pangu.data import build_pretraining_datasets
    from paddle_pangu.evaluation.scoring import perplexity
    from paddle_pangu.inference.generation import generate
    from paddle_pangu.inference.loading import load_model_and_tokenizer
    from paddle_pangu.inference.quantize import quantize_model

    with tempfile.TemporaryDirectory(prefix="int8-accuracy-") as tmp:
        source = args.model
        mp, pp, _ = detect_layout(args.model)
        if mp * pp > 1:
            print(f"merging {args.model} (mp{mp} pp{pp}) to one rank", file=sys.stderr)
            reshard(args.model, tmp, 1, 1)
            source = tmp
        fp32, tok = load_model_and_tokenizer(source)
        converted = {mode: quantize_model(load_model_and_tokenizer(source)[0], mode) for mode in MODES}
    seq = fp32.config.max_position_embeddings
    valid = build_pretraining_datasets([args.data], None, seq, {"valid": args.samples}, args.seed)["valid"]
    windows = [valid[i] for i in range(len(valid))]
    result = {"model": args.model, "data": args.data, "split": "valid", "windows": len(windows), "seq": seq,
              "modes": {}}
    prompts = [list(map(int, w[: args.prompt_len])) for w in windows[: args.prompts]]
    ids = paddle.to_tensor(np.asarray(prompts, "int64"))
    with paddle.no_grad():
        result["ppl_fp32"] = perplexity(fp32, iter(windows), tokenizer=tok)
        a = fp32(ids).numpy()  # [N, S, V]
        result["max_abs_logit_fp32"] = float(np.abs(a).max())
    ga = generate(fp32, prompts, max_new_tokens=args.new_tokens, eos_token_id=-1)
    for mode, model in converted.items():
        r = result["modes"][mode] = {}
        with paddle.no_grad():
            r["ppl"] = perplexity(model, iter(windows), tokenizer=tok)
            r["ppl_ratio"] = r["ppl"]["perplexity"] / result["ppl_fp32"]["perplexity"]
            b = model(ids).numpy()
            r["max_logit_error"] = float(np.abs(a - b).max())
            r["argmax_agreement_all_positions"] = float((a.argmax(-1) == b.argmax(-1)).mean())
        gb = generate(model, prompts, max_new_tokens=args.new_tokens, eos_token_id=-1)
        agree = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), min(len(s), len(t))) for s, t in zip(ga, gb)]
        r["greedy"] = {"prompts": len(prompts), "new_tokens": args.new_tokens, "agree_before_divergence": agree,
                       "mean": float(np.mean(agree)), "min": int(min(agree)),
                       "all_the_way": int(sum(x == args.new_tokens for x in agree))}
    result["load"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
