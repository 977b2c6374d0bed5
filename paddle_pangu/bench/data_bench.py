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
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

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
    from ..data import ray_engine
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
    row = _row("ray", workers, stats, seconds, mb, peak.peak, round(startup, 1))
    row["timeline"] = timeline(ray_engine.TIMELINE)
    return row


def timeline(tl: dict) -> dict:
    """The driver's phases (seconds from the run's start, and each phase's length) and every task's worker,
    warm-up and work (`ray_engine.TIMELINE`: wall clocks of one machine), relative to the run's start."""
    phases = tl["phases"]
    t0 = phases[0][1] if phases else 0.0
    out = {"phases": [{"phase": name, "at_s": round(t - t0, 2),
                       "seconds": round((phases[i + 1][1] if i + 1 < len(phases) else t) - t, 2)}
                      for i, (name, t) in enumerate(phases)], "tasks": []}
    for task in sorted(tl["tasks"], key=lambda x: x["start"]):
        out["tasks"].append({"stage": task["stage"], "shard": task["shard"], "pid": task["pid"],
                             "worker_born_s": None if task["born"] is None else round(task["born"] - t0, 2),
                             "start_s": round(task["start"] - t0, 2), "end_s": round(task["end"] - t0, 2),
                             "warm_s": task["warm_s"],
                             "work_s": round(task["end"] - task["start"] - task["warm_s"], 2)})
    return out


def timeline_table(row: dict) -> str:
    """One Ray run's timeline: the driver's phases, then each task (worker pid, when it started, warm-up)."""
    tl = row["timeline"]
    lines = [f"Ray {row['workers']} CPU(s), round {row.get('round', '-')}, load {row.get('load', '-')}: "
             f"{row['seconds']} s", "| driver phase | from s | seconds |", "|---|---|---|"]
    lines += [f"| {p['phase']} | {p['at_s']} | {p['seconds']} |" for p in tl["phases"]]
    lines += ["| task | shard | worker pid | worker started s | start s | end s | warm-up s | work s |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['stage']} | {t['shard']} | {t['pid']} | {t['worker_born_s']} | {t['start_s']} | {t['end_s']} | "
              f"{t['warm_s']} | {t['work_s']} |" for t in tl["tasks"]]
    return "\n".join(lines)


def profile_stages(corpus: Path, mb: float, out: Path) -> dict:
    """The default stages one after another in this process, on the same documents, start-up excluded
    (dictionaries, regexes and the segmenter loaded before timing): wall and CPU seconds per stage, MB (input
    MB) per CPU-second, their sum, and the baseline: python jieba's segmentation alone on every cleaned
    document (before dedup: the text the pipeline was given; credited with the whole input MB, which
    favours the baseline by the few % that cleaning drops). Also checks that the compiled segmenter's
    output equals python jieba's on every document that reaches the tokenizer."""
    from ..data.cleaning import Cleaner
    from ..data.dedup import MinHashDeduplicator, minhash_values
    from ..data.indexed_dataset import IndexedDatasetBuilder
    from ..data.pipeline import PipelineConfig
    from ..data.readers import read_documents
    from ..data.stats import IssueLog, StageStats
    from ..tokenizer import PanGuSentencePiece, fastseg

    cfg = PipelineConfig(inputs=[str(corpus)], output=str(out), name="c", progress=False)
    cleaner, codec = Cleaner(cfg.cleaning), PanGuSentencePiece()
    cleaner._regexes()  # compiled once per process: start-up
    minhash_values("预热 warm-up", cfg.dedup)  # loads (or builds) the compiled MinHash: start-up
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}  # this process's CPU seconds: what a stage costs a core, whatever the load

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        seconds[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        return value

    docs = timed("read", lambda: list(read_documents([str(corpus)], cfg.reader, IssueLog())))
    stats = StageStats("clean")
    kept = timed("clean", lambda: [d for d in (cleaner.clean(doc, stats) for doc in docs) if d is not None])
    texts = [d.text for d in kept]
    sigs = timed("minhash", lambda: [minhash_values(t, cfg.dedup) for t in texts])

    def dedup():
        index = MinHashDeduplicator(cfg.dedup)
        for i, v in enumerate(sigs):
            index.add(i, v)
        return index.result()

    drop = timed("dedup", dedup).drop
    cleaned, texts = texts, [t for i, t in enumerate(texts) if i not in drop]
    segmented = timed("segment (compiled jieba)", lambda: [codec.segment(t) for t in texts])
    ids = timed("sentencepiece", lambda: codec.sp.encode(segmented, num_threads=1))

    def pack():
        out.mkdir(parents=True, exist_ok=True)
        with IndexedDatasetBuilder(out / "profile", np.uint16) as builder:
            for doc in ids:
                builder.add_document(doc + [9])

    timed("pack", pack)
    pipeline_s, pipeline_cpu = sum(seconds.values()), sum(cpu.values())
    # the baseline segments every cleaned document (dedup survivors or not: the text the pipeline was given)
    reference = timed("python jieba alone", lambda: [fastseg.python_segment(t) for t in cleaned])
    jieba_s, jieba_cpu = seconds.pop("python jieba alone"), cpu.pop("python jieba alone")
    reference = [r for i, r in enumerate(reference) if i not in drop]
    return {"stages": {k: {"seconds": round(v, 3), "cpu_s": round(cpu[k], 3),
                           "mb_per_cpu_s": round(mb / cpu[k], 2) if cpu[k] else None}
                       for k, v in seconds.items()},
            "pipeline_s": round(pipeline_s, 2), "pipeline_cpu_s": round(pipeline_cpu, 2),
            "pipeline_mb_per_cpu_s": round(mb / pipeline_cpu, 3),
            "python_jieba_s": round(jieba_s, 2), "python_jieba_cpu_s": round(jieba_cpu, 2),
            "python_jieba_mb_per_cpu_s": round(mb / jieba_cpu, 3),
            "pipeline_vs_python_jieba": round(jieba_cpu / pipeline_cpu, 2),
            "segmenter": fastseg.backend(), "segmentation_identical": reference == segmented,
            "documents": len(texts), "cleaned_documents": len(cleaned)}


def _ratios(rows: list[dict]) -> dict:
    """Same-round throughput ratios (rows of one round ran back to back, so they saw similar load)."""
    by = {(r["engine"], r["workers"]): r["mb_per_s"] for r in rows}
    out = {}
    for name, a, b in (("ray2/ray1", ("ray", 2), ("ray", 1)), ("ray2/local2", ("ray", 2), ("local", 2)),
                       ("ray1/local1", ("ray", 1), ("local", 1)), ("local2/local1", ("local", 2), ("local", 1))):
        if a in by and b in by:
            out[name] = round(by[a] / by[b], 3)
    # whether the 2-CPU run had two cores: the same shards' scan seconds, Ray 2 over Ray 1 (≈ 1 with a free
    # second core; ≈ 2 when its two workers shared one core, e.g. with other jobs running)
    per_shard = {}
    for r in rows:
        scans = [t["work_s"] for t in r.get("timeline", {}).get("tasks", []) if t["stage"] == "scan"]
        if r["engine"] == "ray" and scans:
            per_shard[r["workers"]] = sum(scans) / len(scans)
    if per_shard.get(1) and 2 in per_shard:
        out["ray2/ray1 scan s per shard"] = round(per_shard[2] / per_shard[1], 2)
    return out


def bench_data(mb: float = 2.0, local_workers: int = 2, ray_workers=(1, 2), local_1: bool = True,
               rounds: int = 1) -> dict:
    """Both engines on the same N MB; rows per engine/worker count, and whether their .bin are equal; the
    in-process per-stage profile with python jieba alone as the same-run baseline (`profile_stages`).
    With `rounds` > 1 every configuration runs once per round, the order reversed every other round
    (interleaved), and the ratios are given per round with the load average beside each row."""
    load = os.getloadavg()[0]
    configs = [("local", w) for w in sorted({1, local_workers} if local_1 else {local_workers})]
    configs += [("ray", w) for w in ray_workers]
    with tempfile.TemporaryDirectory(prefix="pangu_bench_data_") as tmp:
        root = Path(tmp)
        (root / "corpus").mkdir()
        written = write_corpus(root / "corpus", mb)
        profile = profile_stages(root / "corpus", written, root / "profile")
        rows, per_round, same = [], [], True
        ref = None
        for rnd in range(max(1, rounds)):
            this = []
            for engine, w in (configs if rnd % 2 == 0 else configs[::-1]):
                out = root / f"{engine}{w}-{rnd}"
                before = os.getloadavg()[0]
                row = (_local if engine == "local" else _ray)(root / "corpus", out, w, written)
                row.update(round=rnd, load=round(before, 1))
                this.append(row)
                data = (out / "c.bin").read_bytes()
                ref = data if ref is None else ref
                same = same and data == ref
                shutil.rmtree(out)
            rows += this
            per_round.append(_ratios(this))
    return {"name": "data", "rows": rows, "identical_bin": same, "load_before": round(load, 1),
            "load_after": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(), "profile": profile,
            "ratios_per_round": per_round, "jieba_baseline_mb_per_s": round(written / profile["python_jieba_s"], 3)}


def table(result: dict) -> str:
    cols = ("round", "load", "engine", "workers", "mb", "pass1_mb_per_s", "dedup_mb_per_s", "tokenize_mb_per_s", "mb_per_s",
            "seconds", "peak_rss_mb", "ray_startup_s", "documents", "near_duplicates")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    base = result.get("jieba_baseline_mb_per_s")
    if base:  # per core: a row's MB/s over its worker count, against python jieba alone on one core
        lines.append("per core vs python jieba alone (" + f"{base} MB/s): " + ", ".join(
            f"{r['engine']} {r['workers']}: {r['mb_per_s'] / r['workers'] / base:.2f}x" for r in result["rows"]))
    for i, ratios in enumerate(result.get("ratios_per_round", [])):
        lines.append(f"round {i} ratios (same round): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    lines.append(f"identical .bin across engines: {result['identical_bin']}; load {result['load_before']} -> "
                 f"{result['load_after']} on {result['cpus']} CPUs")
    if "profile" in result:
        lines.append(profile_table(result["profile"]))
    lines += [timeline_table(r) for r in result["rows"] if r.get("timeline")]
    return "\n".join(lines)


def profile_table(p: dict) -> str:
    lines = ["| stage (one process, in turn) | wall s | CPU s | MB per CPU-second |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['cpu_s']} | {v['mb_per_cpu_s']} |" for k, v in p["stages"].items()]
    lines.append(f"| **all stages** | {p['pipeline_s']} | {p['pipeline_cpu_s']} | {p['pipeline_mb_per_cpu_s']} |")
    lines.append(f"| python jieba alone (baseline) | {p['python_jieba_s']} | {p['python_jieba_cpu_s']} | "
                 f"{p['python_jieba_mb_per_cpu_s']} |")
    lines.append(f"all stages vs python jieba alone (CPU): {p['pipeline_vs_python_jieba']}x; segmenter {p['segmenter']}, "
                 f"identical to python jieba: {p['segmentation_identical']} "
                 f"({p['documents']} documents tokenized; the baseline segments all {p['cleaned_documents']} "
                 "cleaned documents)")
    return "\n".join(lines)
