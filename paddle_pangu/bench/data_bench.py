"""`pangu bench data`: `prepare-data` throughput, local engine vs Ray with 1 and 2 workers.

The corpus is N MB of the embedded People's Daily articles written as JSONL
shards (replicated with a one-character edit per copy past the corpus's own
size, so dedup sees near-duplicates, not only distinct articles). Every
engine runs the default stages (clean, dedup, tokenize) on the same files;
MB/s is input MB over the seconds of each stage (pass 1 = read + clean +
MinHash, dedup = the LSH / clustering pass, tokenize = drop + tokenize +
write) and over the whole run. Peak memory is the largest summed RSS of this
process and all its descendants (the local pool, or the Ray raylet and its
workers), sampled every 0.2 s. A local Ray cluster's start-up is reported
apart and not counted in the run. The engines' `.bin` are checked equal.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

MB = 1e6


def write_corpus(root: Path, mb: float, shards: int = 4) -> float:
    """N MB of JSONL in `shards` files; returns the MB written."""
    from ..data.builtin import read_builtin
    from ..data.stats import IssueLog

    arts = [d.text for d in read_builtin("builtin:peoples-daily", IssueLog())]
    fhs = [open(root / f"part-{k:03d}.jsonl", "w", encoding="utf-8") for k in range(shards)]
    size, i = 0, 0
    try:
        while size < mb * MB:
            text = arts[i % len(arts)]
            copy = i // len(arts)
            if copy:  # a near-duplicate: one character changed per copy
                pos = (37 * copy) % max(1, len(text))
                text = text[:pos] + "之" + text[pos + 1:]
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            fhs[i % shards].write(line)
            size += len(line.encode("utf-8"))
            i += 1
    finally:
        for fh in fhs:
            fh.close()
    return size / MB


class PeakRSS:
    """Largest summed RSS of this process tree while the context is open."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _row(engine: str, workers: int, stats, seconds: float, mb: float, peak: int, startup: float | None) -> dict:
    s = stats.to_dict()
    stage_s = {"pass1": s["summary"].get("pass 1 seconds (read+clean+quality+minhash)", 0.0),
               "dedup": s["stages"].get("dedup", {}).get("seconds", 0.0),
               "tokenize": s["stages"]["tokenize"]["seconds"]}
    row = {"engine": engine, "workers": workers, "mb": round(mb, 2), "seconds": round(seconds, 2),
           "mb_per_s": round(mb / seconds, 3), "peak_rss_mb": round(peak / MB, 1),
           "documents": s["summary"]["documents"], "near_duplicates": s["stages"]["dedup"]["dropped"].get(
               "near_duplicate", 0), "ray_startup_s": startup}
    for name, sec in stage_s.items():
        row[f"{name}_s"] = round(sec, 2)
        row[f"{name}_mb_per_s"] = round(mb / sec, 3) if sec else None
    return row


def _local(corpus: Path, out: Path, workers: int, mb: float) -> dict:
    from ..data.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(inputs=[str(corpus)], output=str(out), name="c", progress=False, num_workers=workers)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        stats = run_pipeline(cfg)
        seconds = time.perf_counter() - t0
    return _row("local", workers, stats, seconds, mb, peak.peak, None)


def _ray(corpus: Path, out: Path, workers: int, mb: float) -> dict:
    import ray

    from ..data.pipeline import PipelineConfig
    from ..data.ray_engine import run_pipeline_ray

    cfg = PipelineConfig(inputs=[str(corpus)], output=str(out), name="c", progress=False, num_workers=workers)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            stats = run_pipeline_ray(cfg)
            seconds = time.perf_counter() - t1
        finally:
            ray.shutdown()
    return _row("ray", workers, stats, seconds, mb, peak.peak, round(startup, 1))


def bench_data(mb: float = 2.0, local_workers: int = 2, ray_workers=(1, 2)) -> dict:
    """Both engines on the same N MB; rows per engine/worker count, and whether their .bin are equal."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pangu_bench_data_") as tmp:
        root = Path(tmp)
        (root / "corpus").mkdir()
        written = write_corpus(root / "corpus", mb)
        rows = [_local(root / "corpus", root / "local", local_workers, written)]
        for w in ray_workers:
            rows.append(_ray(root / "corpus", root / f"ray{w}", w, written))
        ref = (root / "local" / "c.bin").read_bytes()
        same = all((root / f"ray{w}" / "c.bin").read_bytes() == ref for w in ray_workers)
    return {"name": "data", "rows": rows, "identical_bin": same, "load_before": round(load, 1),
            "load_after": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}


def table(result: dict) -> str:
    cols = ("engine", "workers", "mb", "pass1_mb_per_s", "dedup_mb_per_s", "tokenize_mb_per_s", "mb_per_s",
            "seconds", "peak_rss_mb", "ray_startup_s", "documents", "near_duplicates")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    lines.append(f"identical .bin across engines: {result['identical_bin']}; load {result['load_before']} -> "
                 f"{result['load_after']} on {result['cpus']} CPUs")
    return "\n".join(lines)
