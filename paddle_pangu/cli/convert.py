"""`pangu convert`: released PanGu-alpha checkpoints -> model directory, and model directory -> HF safetensors.

    pangu convert --from mindspore PanGu-alpha_2.6B.ckpt --output models/pangu-2.6b --preset 2.6b
    pangu convert --from megatron Pangu-alpha_2.6B_fp16_mgt/ --output models/pangu-2.6b
    pangu convert --from hf pangu-2_6B/ --output models/pangu-2.6b
    pangu convert --to hf models/pangu-2.6b --output exported/pangu-2.6b-hf

See docs/CONVERT.md for each release and the memory each conversion needs.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys

from ..config.model_config import ACTIVATIONS
from ..convert.common import DEFAULT_SHARD_BYTES, DTYPES

FROM_FORMATS = ("mindspore", "megatron", "hf")


def parse_size(text: str) -> int:
    """'2GB' / '500MB' / '1024' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"--max-shard-size {text!r}: expected e.g. 2GB, 500MB or a byte count")
    scale = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}[m.group(2)]
    return int(float(m.group(1)) * scale)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="src_format", choices=FROM_FORMATS, help="format of SRC (import)")
    direction.add_argument("--to", dest="dst_format", choices=("hf",), help="export a model directory SRC to this format")
    parser.add_argument("src", metavar="SRC", help="checkpoint file or directory (import) / model directory (export)")
    parser.add_argument("--output", "-o", required=True, help="output directory")
    parser.add_argument("--preset", help="model preset to check shapes against (tiny, mini, 350m, 2.6b, 13b, 200b); "
                                         "default: read shapes from the checkpoint")
    parser.add_argument("--hidden-act", choices=ACTIVATIONS, help="activation (default gelu_tanh, REF: released weights)")
    parser.add_argument("--num-heads", type=int, help="attention heads when no preset / source config gives them")
    parser.add_argument("--vocab-size", type=int, help="true vocabulary size (drops Megatron padding rows; default 40000)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="stored dtype (default float32: fp16 releases are upcast; bfloat16 is safetensors BF16)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="Megatron .pt files holding Python objects besides tensors: unpickle them fully "
                             "(only for files you trust)")
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES,
                        help="largest safetensors shard (default 2GB)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.dst_format == "hf":
            from ..convert.hf import export_hf

            files = export_hf(args.src, args.output, dtype=args.dtype, max_shard_bytes=args.max_shard_size)
            print(f"exported {args.src} -> {args.output} ({len(files)} safetensors file(s), gpt_pangu names)")
            return 0
        from ..convert.api import convert_checkpoint

        overrides = {"hidden_act": args.hidden_act, "num_attention_heads": args.num_heads, "vocab_size": args.vocab_size}
        config = convert_checkpoint(args.src_format, args.src, args.output, preset=args.preset, overrides=overrides,
                                    dtype=args.dtype, max_shard_bytes=args.max_shard_size,
                                    trust_pickle=args.trust_pickle)
    except ValueError as exc:  # ConversionError, or PanGuConfig rejecting the resolved shape
        print(f"pangu convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {args.src} -> {args.output}: {config.num_parameters() / 1e6:.1f}M parameters, "
          f"{config.num_layers} layers, hidden {config.hidden_size}, hidden_act {config.hidden_act}; "
          f"load with PanGuForCausalLM.from_pretrained({args.output!r})")
    return 0
