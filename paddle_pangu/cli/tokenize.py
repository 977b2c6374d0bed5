"""`pangu tokenize`: show the PanGu tokens and ids of a text, a file, or decode ids.

    pangu tokenize "今天天气不错 ok"          # table of position, id, piece
    pangu tokenize --ids-only "今天天气不错"   # ids only, space separated
    pangu tokenize --file doc.txt [--per-line] # whole file as one text, or one line per document
    pangu tokenize --decode "1 2 3"            # ids (space or comma separated) -> text
    echo 文本 | pangu tokenize -               # read the text from stdin

Uses the fast jieba + SentencePiece path (same ids as `PanGuTokenizer`), so it never imports paddle.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from paddle_pangu.tokenizer.batch import batch_encode_ids
from paddle_pangu.tokenizer.core import PanGuSentencePiece, TokenizerInputError, ensure_text
from paddle_pangu.errors import UsageError as _UsageError

PROGRESS_MIN_LINES = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help='text to tokenize ("-" reads stdin)')
    parser.add_argument("--file", type=Path, help="tokenize this UTF-8 file")
    parser.add_argument("--per-line", action="store_true", help="with --file: every line is a document")
    parser.add_argument("--decode", metavar="IDS", help='decode ids, e.g. "1 2 3" or "1,2,3"')
    parser.add_argument("--ids-only", action="store_true", help="print only the ids")
    parser.add_argument("--json", action="store_true", help="print JSON (one object; JSON lines with --per-line)")
    parser.add_argument("--vocab", default=None, help="vocab.model file or directory (default: pcl-pangu's)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for --per-line")


class UsageError(_UsageError):
    """Bad command-line input; printed without a traceback."""


def _parse_ids(spec: str) -> list[int]:
    items = [s for s in re.split(r"[\s,]+", spec.strip().strip("[]")) if s]
    try:
        return [int(s) for s in items]
    except ValueError:
        raise UsageError(f"--decode expects integers separated by spaces or commas, got {spec!r}") from None


def _read_text(args: argparse.Namespace) -> str:
    if args.file is not None:
        if not args.file.is_file():
            raise UsageError(f"--file {args.file}: no such file")
        return ensure_text(args.file.read_bytes(), source=str(args.file))
    if args.text == "-":
        return ensure_text(sys.stdin.buffer.read(), source="<stdin>")
    # argv undecodable as UTF-8 arrives with surrogate escapes: re-check the original bytes.
    return ensure_text(os.fsencode(args.text), source="TEXT argument")


def _print_encoded(codec: PanGuSentencePiece, text: str, ids: list[int], args: argparse.Namespace) -> None:
    if args.json:
        pieces = [codec.sp.id_to_piece(i) for i in ids]
        print(json.dumps({"text": text, "ids": ids, "tokens": pieces, "num_tokens": len(ids)}, ensure_ascii=False))
    elif args.ids_only:
        print(" ".join(map(str, ids)))
    else:
        print(f"{len(ids)} tokens ({len(text)} characters)")
        print(f"{'pos':>5}  {'id':>6}  piece")
        for pos, i in enumerate(ids):
            print(f"{pos:>5}  {i:>6}  {codec.sp.id_to_piece(i)}")


def _run_per_line(codec: PanGuSentencePiece, text: str, args: argparse.Namespace) -> None:
    lines = text.splitlines()
    # tqdm bar (on stderr) for big files; stdout stays machine-readable.
    encoded = batch_encode_ids(lines, num_workers=args.workers, codec=codec, progress=len(lines) >= PROGRESS_MIN_LINES)
    for line, ids in zip(lines, encoded):
        if args.json:
            print(json.dumps({"text": line, "ids": ids}, ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))


def _check_args(args: argparse.Namespace) -> None:
    sources = [args.text is not None, args.file is not None, args.decode is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one of TEXT, --file PATH or --decode IDS")
    if args.per_line and args.file is None:
        raise UsageError("--per-line needs --file")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")


def run(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
        codec = PanGuSentencePiece(args.vocab)
        if args.decode is not None:
            ids = _parse_ids(args.decode)
            text = codec.decode_ids(ids)
            print(json.dumps({"ids": ids, "text": text}, ensure_ascii=False) if args.json else text)
            return 0
        text = _read_text(args)
        if args.per_line:
            _run_per_line(codec, text, args)
        else:
            _print_encoded(codec, text, codec.encode_ids(text), args)
    except (UsageError, TokenizerInputError, FileNotFoundError, ValueError) as err:
        print(f"pangu tokenize: error: {' '.join(str(err).split())}", file=sys.stderr)  # the one CLI form
        return 2
    return 0
