"""`pangu reshard`: rewrite a checkpoint of this project for another tensor/pipeline-parallel layout.

    pangu reshard models/pangu-2.6b --output ckpt/pangu-2.6b-mp8 --mp 8
    pangu reshard ckpt/run1/step_1000 --output models/merged --mp 1 --pp 1

The split rule per parameter is the weight table of `paddle_pangu.model.weight_tables`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..config.parallel_config import ParallelConfigError
from .common import DEFAULT_SHARD_BYTES, DTYPES, ConversionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="checkpoint directory in any mp/pp layout (config.json + weights)")
    parser.add_argument("--output", "-o", required=True, help="output directory")
    parser.add_argument("--mp", type=int, default=1, help="target tensor-parallel degree (default 1 = merge)")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel degree (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="stored dtype (default: as the source)")


def run(args: argparse.Namespace) -> int:
    from .reshard import reshard

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.mp < 1 or args.pp < 1:
        print(f"pangu reshard: error: --mp {args.mp} / --pp {args.pp} must be >= 1", file=sys.stderr)
        return 2
    try:
        files = reshard(args.src, args.output, args.mp, args.pp, dtype=args.dtype, max_shard_bytes=DEFAULT_SHARD_BYTES)
    except (ConversionError, ParallelConfigError) as exc:
        print(f"pangu reshard: error: {exc}", file=sys.stderr)
        return 2
    print(f"resharded {args.src} -> {args.output} (mp{args.mp} pp{args.pp}): {len(files)} weight file(s)")
    return 0
