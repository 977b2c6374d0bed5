"""`pangu export`: write Paddle Inference graphs (prefill + decode with a KV cache) for serving."""
from __future__ import annotations

import argparse

from ..export import DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (config.json + weights) or preset:NAME")
    p.add_argument("--output", required=True, help="directory for prefill/decode .json + .pdiparams")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights and KV cache dtype in the graphs (logits always float32)")


def run(args) -> int:
    from ...errors import CheckpointError
    from ..export import export_model
    from ..loading import load_model_and_tokenizer

    try:
        model, tok = load_model_and_tokenizer(args.model)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None
    export_model(model, args.output, dtype=args.dtype)
    tok.save_pretrained(args.output)
    print(f"exported {args.dtype} prefill and decode graphs to {args.output}; run them with "
          f"`pangu generate --model {args.output} --prompt ...` or `pangu serve --model {args.output}`")
    return 0
