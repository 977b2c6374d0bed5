"""Thin wrapper: `python tools/benchmark.py [tokenize|train|generate] ...` == `pangu bench ...`.

Set MKL_DEBUG_CPU_TYPE=5 on AMD CPUs before running (PLATFORM.md: paddle's MKL otherwise takes its slow path).
"""
import sys

from paddle_pangu.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
