"""Thin wrapper: `python tools/prepare_data.py ...` == `pangu prepare-data ...`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddle_pangu.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["prepare-data"] + sys.argv[1:]))
