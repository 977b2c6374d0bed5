"""Multi-process batch encoding (REF "Tokenizer": jieba is pure Python, so batch it across processes).

Each worker process loads jieba and the SentencePiece model once (pool initializer) and
encodes chunks of documents; `Pool.imap` keeps the output in input order. Workers rely on
no inherited state, so every start method works. Default (`default_start_method`): "fork"
(fast, no `if __name__ == "__main__"` guard needed) unless paddle is already imported in
this process, then "spawn" (forking a process that runs paddle's threads is unsafe); with
"spawn" the calling script needs the usual main guard. Workers import only this light
module, never paddle or paddlenlp.
Small inputs are encoded serially in the calling process: starting workers costs about a
second, more than jieba needs for a few hundred thousand characters.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from .core import PanGuSentencePiece, load_sentencepiece

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64
# Below this many characters in total, a pool costs more than it saves.
DEFAULT_MIN_CHARS_FOR_POOL = 400_000
# Seconds to wait for the first worker to load jieba + SentencePiece (generous: shared CPUs).
DEFAULT_STARTUP_TIMEOUT = 180.0

_worker_codec: PanGuSentencePiece | None = None


def _init_worker(vocab_file: str) -> None:
    global _worker_codec
    _worker_codec = PanGuSentencePiece(vocab_file, check_special_ids=False)


def _ping() -> bool:
    return _worker_codec is not None


def _encode_chunk(job: tuple[int, list]) -> list[list[int]]:
    start, texts = job
    assert _worker_codec is not None, "worker used without _init_worker"
    return _worker_codec.encode_many(texts, "texts", start)


def default_start_method() -> str:
    """Return "fork" when available and paddle is not imported here, else "spawn" (see module doc)."""
    if "fork" in multiprocessing.get_all_start_methods() and "paddle" not in sys.modules:
        return "fork"
    return "spawn"


def default_num_workers() -> int:
    """Usable CPU count (respects the process's CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _with_progress(items: Iterator, total: int, enabled: bool) -> Iterator:
    """`items` wrapped in a tqdm bar over documents (rate and ETA) when `enabled`."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="doc", desc="tokenize")


def _chunks(texts: Iterable, chunk_size: int) -> Iterator[tuple[int, list]]:
    chunk: list = []
    start = 0
    for i, t in enumerate(texts):
        if not chunk:
            start = i
        chunk.append(t)
        if len(chunk) == chunk_size:
            yield start, chunk
            chunk = []
    if chunk:
        yield start, chunk


class ParallelEncoder:
    """A reusable pool of tokenizer worker processes; use as a context manager.

    Args:
        vocab_file: `vocab.model` path (or directory); None finds the installed pcl-pangu one.
        num_workers: worker processes (default: usable CPU count).
        chunk_size: documents per task sent to a worker.
        start_method: multiprocessing start method; None picks `default_start_method()`.
    """

    def __init__(self, vocab_file=None, num_workers: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 start_method: str | None = None, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.vocab_file, _ = load_sentencepiece(vocab_file)  # fail here, not in a worker initializer
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.chunk_size = chunk_size
        self.start_method = start_method or default_start_method()
        ctx = multiprocessing.get_context(self.start_method)
        self._pool = ctx.Pool(self.num_workers, initializer=_init_worker, initargs=(str(self.vocab_file),))
        self._wait_until_ready(startup_timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        """Fail instead of hanging when workers cannot start (Pool would respawn them forever)."""
        try:
            self._pool.apply_async(_ping).get(timeout=timeout)
        except multiprocessing.TimeoutError:
            self._pool.terminate()
            self._pool.join()
            raise RuntimeError(
                f"tokenizer worker processes ({self.start_method!r} start method) did not start within "
                f"{timeout:.0f}s. With 'spawn' the calling script must guard its entry point with "
                "`if __name__ == \"__main__\":`; or pass num_workers=1 to encode in this process."
            ) from None

    def imap(self, texts: Iterable[str | bytes]) -> Iterator[list[int]]:
        """Encode a (possibly streaming) iterable of documents; yields id lists in input order."""
        for encoded in self._pool.imap(_encode_chunk, _chunks(texts, self.chunk_size)):
            yield from encoded

    def encode(self, texts: Sequence[str | bytes], progress: bool = False) -> list[list[int]]:
        """Encode a list of documents; optional tqdm bar over documents."""
        return list(_with_progress(self.imap(texts), len(texts), progress))

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> "ParallelEncoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pool.terminate()
            self._pool.join()


def _total_chars(texts: Sequence[str | bytes], limit: int) -> int:
    total = 0
    for t in texts:
        total += len(t)
        if total >= limit:
            break
    return total


def batch_encode_ids(
    texts: Sequence[str | bytes],
    vocab_file=None,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_chars_for_pool: int = DEFAULT_MIN_CHARS_FOR_POOL,
    codec: PanGuSentencePiece | None = None,
    progress: bool = False,
    start_method: str | None = None,
) -> list[list[int]]:
    """Encode many documents, in input order; identical ids to encoding them one by one.

    Uses a process pool when `num_workers` (default: CPU count) > 1 and the input holds at
    least `min_chars_for_pool` characters; otherwise encodes serially (with `codec` if given).
    """
    texts = list(texts)
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    serial = workers == 1 or len(texts) <= 1 or _total_chars(texts, min_chars_for_pool) < min_chars_for_pool
    if serial:
        codec = codec or PanGuSentencePiece(vocab_file)
        encoded = (codec.encode_ids(t, source=f"texts[{i}]") for i, t in enumerate(texts))
        return list(_with_progress(encoded, len(texts), progress))
    vocab = codec.vocab_file if codec is not None else vocab_file
    workers = min(workers, len(texts))
    t0 = time.perf_counter()
    with ParallelEncoder(vocab, workers, chunk_size, start_method) as enc:
        out = enc.encode(texts, progress=progress)
    logger.debug("encoded %d docs with %d workers in %.2fs", len(texts), workers, time.perf_counter() - t0)
    return out

