"""`pangu merge-lora`: fold the adapters of `pangu finetune --lora` into a plain model directory."""
from __future__ import annotations

import argparse

from ..finetune.lora import merge_lora


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="model directory the adapters were trained on")
    p.add_argument("--lora", required=True, help="output_dir of `pangu finetune --lora` (lora_config.json + weights)")
    p.add_argument("--output", required=True, help="where to write the merged plain model directory")


def run(args) -> int:
    out = merge_lora(args.base, args.lora, args.output)
    print(f"merged model written to {out}")
    return 0
