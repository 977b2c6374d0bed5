"""`pangu reshard` (a sibling of `pangu convert` in the convert package): rewrite a checkpoint of this project for another tensor/pipeline-parallel layout.

    pangu reshard models/pangu-2.6b --output ckpt/pangu-2.6b-mp8 --mp 8
    pangu reshard ckpt/run1/step_1000 --output models/merged --mp 1 --pp 1

The split rule per parameter is the weight table of `paddle_pangu.model.weight_tables`.
"""
from __future__ import annotations

import argparse
import logging
import os

from ..errors import UsageError
from ..convert.common import DEFAULT_SHARD_BYTES, DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="checkpoint directory in any mp/pp layout (config.json + weights)")
    parser.add_argument("--output", "-o", required=True, help="output directory")
    parser.add_argument("--mp", type=int, default=1, help="target tensor-parallel degree (default 1 = merge)")
    parser.add_argument("--pp", type=int, default=1, help="target pipeline-parallel degree (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="stored dtype (default: as the source)")


def run(args: argparse.Namespace) -> int:
    from ..convert.reshard import reshard

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.mp < 1 or args.pp < 1:
        raise UsageError(f"--mp {args.mp} / --pp {args.pp}: both must be >= 1")
    if not os.path.isdir(args.src):
        raise UsageError(f"{args.src}: no such checkpoint directory (expected config.json + weights)")
    # ConversionError / ParallelConfigError are PanGuErrors: cli.main prints them as one line, exit 2
    files = reshard(args.src, args.output, args.mp, args.pp, dtype=args.dtype, max_shard_bytes=DEFAULT_SHARD_BYTES)
    print(f"resharded {args.src} -> {args.output} (mp{args.mp} pp{args.pp}): {len(files)} weight file(s)")
    return 0
