"""`pangu export`: write Paddle Inference graphs (prefill + decode with a KV cache) for serving.

A model directory saved per rank (mp > 1 or pp > 1) is merged to one rank first, in a temporary
directory (`convert.reshard`, tensor by tensor): the exported predictor runs in one process. A model
larger than one device runs tensor-parallel with `pangu evaluate / generate / serve --nproc N` instead
(inference/tensor_parallel.py)."""
from __future__ import annotations

import argparse
import os
import tempfile

from ..inference.export import DTYPES
from ..inference.quantize import WEIGHTS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (config.json + weights, any mp/pp layout) "
                                                  "or preset:NAME")
    p.add_argument("--output", required=True, help="directory for prefill/decode .json + .pdiparams")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision the predictor runs at on gpu/npu (graphs traced in float32; see README)")
    p.add_argument("--weights", choices=WEIGHTS, default="fp32",
                   help="int8: weight-only int8 linear layers and tied head (per-channel scales, fp32 activations), "
                        "run by this package's CPU kernel, registered as a custom op for Paddle Inference")
    p.add_argument("--no-head-copy", dest="head_copy", action="store_false",
                   help="leave out the [hidden, vocab] copy of the tied head each graph stores (2x faster head "
                        "GEMV per decode token on CPU; costs the embedding's size again, e.g. on a GPU / NPU)")


def sharded_layout(model: str) -> tuple[int, int]:
    """(mp, pp) of a model directory's weight files; (1, 1) for a plain one or a preset."""
    from ..config.presets import PRESET_PREFIX

    if model.startswith(PRESET_PREFIX) or not os.path.isdir(model):
        return 1, 1
    from ..convert.reshard import detect_layout

    mp, pp, _ = detect_layout(model)
    return mp, pp


def run(args) -> int:
    from ..errors import CheckpointError
    from ..inference.export import export_model
    from ..inference.loading import load_model_and_tokenizer, load_tokenizer

    from ..inference.quantize import check_weights

    check_weights(args.weights)  # a refusal before the model loads
    mp, pp = sharded_layout(args.model)
    with tempfile.TemporaryDirectory(prefix="pangu-export-merge-") as tmp:
        source = args.model
        if mp * pp > 1:
            from ..convert.reshard import reshard

            print(f"{args.model} is saved per rank (mp{mp} pp{pp}); merging to one rank before export (the "
                  f"predictor runs in one process; a model too large for one device runs split with "
                  f"`pangu evaluate / generate / serve --nproc N` instead)")
            reshard(args.model, tmp, 1, 1)
            source = tmp
        try:
            model, _ = load_model_and_tokenizer(source)
        except FileNotFoundError as err:
            raise CheckpointError(str(err)) from None
        export_model(model, args.output, dtype=args.dtype, head_copy=args.head_copy, weights=args.weights)
    load_tokenizer(args.model).save_pretrained(args.output)
    print(f"exported prefill and decode graphs ({args.dtype} predictor, {args.weights} weights) to {args.output}; "
          f"run them with "
          f"`pangu generate --model {args.output} --prompt ...` or `pangu serve --model {args.output}`")
    return 0
