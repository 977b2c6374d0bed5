"""Benchmark: tokenization throughput of the data pipeline vs the single-process reference.

    pangu bench tokenize --mb 2 --workers 2      (or python tools/bench_tokenize.py --mb 2 --workers 2)

Both sides tokenize the same cleaned People's Daily articles (builtin corpus):
  * reference - REF "Tokenizer" written out literally, one document at a time
    in one process (jieba.cut, then SentencePiece), as pcl_pangu does it;
  * pipeline  - `prepare-data`'s tokenize stage: a pool of tokenizer
    processes streaming into the memory-mapped `.bin/.idx` (pool start-up and
    file writing included).
The ratio of the two rates is measured in the same run (machines are shared;
absolute MB/s move from run to run, docs/PLATFORM.md). The pipeline's output is
checked token for token against the reference (+ separator 9).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6


def benchmark_corpus(max_mb: float) -> list[str]:
    """Cleaned People's Daily articles, up to `max_mb` MB of UTF-8."""
    from ..data.builtin import read_builtin
    from ..data.cleaning import Cleaner
    from ..data.stats import IssueLog, StageStats

    cleaner, stats, texts, size = Cleaner(), StageStats("clean"), [], 0
    for doc in read_builtin("builtin:peoples-daily", IssueLog()):
        out = cleaner.clean(doc, stats)
        if out is None:
            continue
        texts.append(out.text)
        size += len(out.text.encode("utf-8"))
        if size >= max_mb * MB:
            break
    return texts


def _pipeline_tokenize(texts: list[str], workers: int, out_dir: Path) -> tuple[float, list]:
    """Time the pipeline's tokenize stage on `texts`; returns (seconds, documents from the .bin)."""
    from ..data.indexed_dataset import IndexedDataset
    from ..data.pipeline import PipelineConfig, _pass_tokenize
    from ..data.stats import PipelineStats

    cfg = PipelineConfig(inputs=["-"], output=str(out_dir), name="bench", progress=False)
    records = ({"id": i, "ref": "", "text": t} for i, t in enumerate(texts))
    t0 = time.perf_counter()
    _pass_tokenize(cfg, records, out_dir, PipelineStats(), sum(map(len, texts)), workers)
    seconds = time.perf_counter() - t0
    ds = IndexedDataset(out_dir / "bench")
    return seconds, [np.asarray(ds[i]) for i in range(len(ds))]


def run_benchmark(max_mb: float = 2.0, workers: int | None = None) -> dict:
    """Both measurements on the same corpus; returns a dict (MB/s, ratio, identical)."""
    from ..tokenizer import PanGuSentencePiece
    from ..tokenizer.batch import default_num_workers
    from .tokenizer_bench import reference_encode

    workers = workers or default_num_workers()
    texts = benchmark_corpus(max_mb)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / MB
    codec = PanGuSentencePiece()  # jieba dictionary loaded before timing
    t0 = time.perf_counter()
    reference = reference_encode(codec, texts)
    ref_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        pipe_s, docs = _pipeline_tokenize(texts, workers, Path(tmp))
    identical = len(docs) == len(reference) and all(
        list(d[:-1]) == r and d[-1] == 9 for d, r in zip(docs, reference)
    )
    return {
        "corpus": "builtin:peoples-daily (cleaned)", "documents": len(texts), "megabytes": round(megabytes, 3),
        "workers": workers, "reference_seconds": round(ref_s, 3), "pipeline_seconds": round(pipe_s, 3),
        "reference_mb_s": round(megabytes / ref_s, 3), "pipeline_mb_s": round(megabytes / pipe_s, 3),
        "speedup": round(ref_s / pipe_s, 3), "identical": identical,
    }


def format_table(r: dict) -> str:
    return "\n".join([
        f"tokenization throughput on {r['megabytes']} MB ({r['documents']} documents of {r['corpus']})",
        f"{'path':<44}{'seconds':>10}{'MB/s':>10}",
        f"{'reference: jieba+SentencePiece, 1 process':<44}{r['reference_seconds']:>10.2f}{r['reference_mb_s']:>10.3f}",
        f"{'pipeline: ' + str(r['workers']) + ' worker processes -> .bin/.idx':<44}"
        f"{r['pipeline_seconds']:>10.2f}{r['pipeline_mb_s']:>10.3f}",
        f"speedup (same run): {r['speedup']:.2f}x   identical token ids: {r['identical']}",
    ])
