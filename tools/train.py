"""Thin wrapper for `paddle.distributed.launch`: same as `pangu train` (or `pangu train --nproc N`).

    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py --config configs/pretrain/mini_cpu_mp2.yaml
"""
from paddle_pangu.training.entry.train_worker import main

if __name__ == "__main__":
    main()
