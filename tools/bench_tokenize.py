"""Thin wrapper: `pangu bench tokenize` (the data pipeline's tokenization throughput vs the single-process
reference, and whether their token ids are identical).

    python tools/bench_tokenize.py --mb 2 --workers 2 [--json FILE]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddle_pangu.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "tokenize", *sys.argv[1:]]))
