"""`pangu finetune`: supervised fine-tuning through the PaddleNLP Trainer.

    pangu finetune configs/finetune/tiny_cpu.yaml --max_steps 20 --learning_rate 1e-4
    pangu finetune configs/finetune/mini_cpu_tp2.yaml --nproc 2
    python -m paddle.distributed.launch --nproc_per_node 2 tools/finetune.py configs/finetune/mini_cpu_tp2.yaml

The config file (JSON or YAML) holds fields of ModelArguments, DataArguments and PaddleNLP's
TrainingArguments; flags override it (`pangu finetune --help` lists every field).
"""
from __future__ import annotations

import argparse
import json
import re


LAUNCH_FLAGS = ("launch_nproc", "launch_verbose")
RANK0_LINES = r"(step \d+/\d+: |finetune \w+ data: )"  # what rank 0 prints per logged step and about its data


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..finetune.arguments import add_arguments as add

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add(p)
    p.add_argument("--nproc", dest="launch_nproc", type=int, default=None, metavar="N",
                   help="start paddle.distributed.launch with N processes on this machine (as `pangu train --nproc`: "
                        "logs in <output_dir>/launch_logs/, rank 0's step lines on the console)")
    p.add_argument("--verbose", dest="launch_verbose", action="store_true",
                   help="with --nproc: show the launcher's whole output")


def run(args) -> int:
    from ..parallel.topology import launched_world_size
    from ..finetune.arguments import parse_finetune_args
    from ..finetune.trainer import run_finetune

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config", *LAUNCH_FLAGS)}
    if args.launch_nproc is not None and launched_world_size() == 1:
        return _launch(args, overrides)
    model_args, data_args, training_args = parse_finetune_args(args.config, overrides)
    metrics = run_finetune(model_args, data_args, training_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2, default=float))
    return 0


def _launch(args, overrides: dict) -> int:
    """`--nproc N`: check the layout against N processes here, then run under paddle.distributed.launch."""
    import importlib.util
    import os

    from ..errors import UsageError
    from ..training.launch import run_launched
    from ..finetune.arguments import _to_argv, check_world_size, read_config_file

    nproc = args.launch_nproc
    if nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {nproc}")
    values = {**(read_config_file(args.config) if args.config else {}), **overrides}
    check_world_size(values, args.config, overrides, world=nproc)
    output_dir = values.get("output_dir") or "."
    worker = importlib.util.find_spec("paddle_pangu.finetune.entry.finetune_worker").origin  # not executed
    argv = [*([args.config] if args.config else []), *_to_argv(overrides)]
    code = run_launched(argv, nproc, os.path.join(output_dir, "launch_logs"), verbose=args.launch_verbose,
                        worker=worker, marker=re.compile(RANK0_LINES), command="finetune")
    if code == 0:
        print(f"fine-tuned model in {output_dir} (metrics: {os.path.join(output_dir, 'launch_logs', 'workerlog.0')})")
    return code
