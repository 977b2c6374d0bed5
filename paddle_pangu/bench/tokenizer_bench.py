"""Tokenizer throughput: the single-process reference vs our batch path, in the same run
(`tokenize_throughput`; `reference_encode` is also the reference of `pangu bench tokenize`).

The reference is the REF "Tokenizer" algorithm exactly as pcl_pangu's JIEBATokenizer runs
it: one document at a time, jieba then SentencePiece, in the calling process. Numbers on
shared machines move from run to run, so compare the ratio (docs/PLATFORM.md "CPU math libraries and speed").
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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
