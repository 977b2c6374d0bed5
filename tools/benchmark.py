"""Thin wrapper: `python tools/benchmark.py [tokenize|train|generate] ...` == `pangu bench ...`.

The CPU math-library environment is set per CPU vendor by paddle_pangu/runtime.py (no env needed).
"""
import sys

from paddle_pangu.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
