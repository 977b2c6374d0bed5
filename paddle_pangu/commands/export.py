"""`pangu export`: write Paddle Inference graphs (prefill + decode with a KV cache) for serving."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (config.json + weights) or preset:NAME")
    p.add_argument("--output", required=True, help="directory for prefill/decode .json + .pdiparams")


def run(args) -> int:
    from ..inference.export import export_model
    from ..inference.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model)
    export_model(model, args.output)
    tok.save_pretrained(args.output)
    print(f"exported prefill and decode graphs to {args.output}; run them with "
          f"`pangu generate --model {args.output} --prompt ...` (Paddle Inference predictor)")
    return 0
