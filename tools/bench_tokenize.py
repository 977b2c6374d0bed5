"""Thin wrapper: data-pipeline tokenization throughput vs the single-process reference.

    python tools/bench_tokenize.py --mb 2 --workers 2
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddle_pangu import runtime  # noqa: E402

runtime.apply()  # per-CPU math-library environment, before paddle is imported
from paddle_pangu.bench.tokenize_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
