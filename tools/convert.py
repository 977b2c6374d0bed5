"""Thin wrapper: `python tools/convert.py ...` == `pangu convert ...` (see docs/CONVERT.md)."""
import sys

from paddle_pangu.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
