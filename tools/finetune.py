"""Thin wrapper for `paddle.distributed.launch`: same as `pangu finetune`.

    python -m paddle.distributed.launch --nproc_per_node 2 tools/finetune.py configs/finetune/mini_cpu_tp2.yaml

Leaves with os._exit once everything is written: paddle 3.3.1's gloo process groups can abort
(SIGABRT) in their destructors after a complete run.
"""
import os
import sys

from paddle_pangu.cli import main

if __name__ == "__main__":
    code = main(["finetune", *sys.argv[1:]])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
