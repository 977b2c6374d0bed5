"""`python tools/verify_jieba.py [FILE ...]`: the compiled jieba segmenter against python jieba
on every document of both built-in corpora and every line (and whole text) of each FILE; prints one JSON
line (strings, characters, differing, times, load) and exits 1 when any string differs. The full-corpus
check of docs/DATA.md "Speed at corpus scale" (the suite checks a sample: tests/unit/test_fastseg.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddle_pangu.data.builtin import read_builtin  # noqa: E402
from paddle_pangu.data.stats import IssueLog  # noqa: E402
from paddle_pangu.tokenizer.fastseg import verify  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/verify_jieba.py", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", help="UTF-8 text files: each line and each whole file is checked")
    args = p.parse_args(argv)

    def texts():
        for source in ("builtin:peoples-daily", "builtin:reviews"):
            for doc in read_builtin(source, IssueLog()):
                yield doc.text
        for path in args.files:
            raw = Path(path).read_text(encoding="utf-8")
            yield raw
            yield from raw.splitlines()

    result = verify(texts())
    result["load"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(result, ensure_ascii=False))
    return 1 if result["differing"] else 0


if __name__ == "__main__":
    sys.exit(main())
