"""Thin wrapper for `paddle.distributed.launch`: same as `pangu train`.

    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py --config configs/pretrain/mini_cpu_mp2.yaml
"""
import sys

from paddle_pangu.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
