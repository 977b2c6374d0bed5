"""`pangu finetune`: supervised fine-tuning through the PaddleNLP Trainer.

    pangu finetune configs/finetune/tiny_cpu.yaml --max_steps 20 --learning_rate 1e-4
    python -m paddle.distributed.launch --nproc_per_node 2 tools/finetune.py configs/finetune/mini_cpu_tp2.yaml

The config file (JSON or YAML) holds fields of ModelArguments, DataArguments and PaddleNLP's
TrainingArguments; flags override it (`pangu finetune --help` lists every field).
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .arguments import add_arguments as add

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add(p)


def run(args) -> int:
    from .arguments import parse_finetune_args
    from .trainer import run_finetune

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    model_args, data_args, training_args = parse_finetune_args(args.config, overrides)
    metrics = run_finetune(model_args, data_args, training_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2, default=float))
    return 0
