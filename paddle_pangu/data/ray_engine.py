"""`pangu prepare-data --engine ray`: the same stages as the local engine, on Ray tasks.

One definition of every rule: each Ray task calls the local engine's own
functions (`readers.read_file` / `builtin.read_builtin`, `cleaning.clean_chunk`,
`pipeline._build_quality_filter`, `dedup.minhash_values`, the tokenizer,
`IndexedDatasetBuilder`, `pipeline._finish_dataset`). What is distributed:

  1. scan (one task per shard: an input file, or a byte range of a large
     one, `shard_specs`): read, clean, quality-filter and MinHash; the
     survivors' text goes to `work/<k>.jsonl`, their signatures to
     `work/<k>.sigs.npy` ([docs, num_perm] uint64, loaded without pickle),
     and `work/<k>.scan.json` (ids, lengths, stats, checksums) is written
     last: it marks the shard done;
  2. dedup: a task per shard cuts its signatures into the LSH bands (the
     same b x r as the local datasketch index) and emits (128-bit band key,
     document id) rows as numpy arrays, already split into one part per
     reducer by key (a hash shuffle through the object store, zero-copy);
     a reducer per part sorts its keys, finds the candidate pairs of each
     bucket and verifies them by estimated Jaccard >= threshold against the
     signatures of those documents only (memory-mapped from the shards'
     files); the driver joins the verified pairs into clusters with `dedup.clusters_from_pairs` (the
     local rule: first document of a cluster in input order is kept);
  3. tokenize (one task per shard): drop the shard's duplicates, tokenize,
     write `shards/<k>.bin/.idx`, then `shards/<k>.json` (lengths, stats,
     checksums); the driver concatenates the shards in input order into
     `<name>.bin/.idx` (byte-identical to the local engine's) and writes the
     manifest (with the shard list).

Tasks are plain Ray tasks (not Ray Data operators): a worker process keeps
its tokenizer and cleaner between tasks (`_cached`), so the jieba
dictionary and SentencePiece model load once per worker, not once per shard.

A shard whose task raises, or whose worker process dies, is submitted again
by the driver (SHARD_ATTEMPTS in all, each failure logged); if its last
scan attempt fails too it is reported (`shard_failed` issue: file and line)
and contributes nothing; the other shards' output is kept. A corrupt gzip
is handled by the reader itself, as locally (`unreadable_file`, file and
line). A driver that dies leaves `<output>.partial-<pid>`; rerun with the
same arguments and the new driver adopts it (`resume.json` must match),
keeps every shard whose `.json` record and checksums verify, and redoes the
rest (a line per redone corrupt shard). `--ray-address` joins a running
cluster; otherwise a local one is started with `num_workers` CPUs. The work
files live under the output's partial directory, which on a real cluster
must be shared storage (docs/DATA.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import DataError, UsageError
from .builtin import BUILTIN_PREFIX, read_builtin
from .cleaning import Cleaner, clean_chunk
from .dedup import (DedupResult, MinHashDeduplicator, band_keys, bucket_pairs, clusters_from_pairs, jaccard_passes,
                    minhash_values, unique_pairs)
from .indexed_dataset import IndexedDataset, IndexedDatasetBuilder, dtype_for_vocab
from .manifest import commit_dir, partial_dir, sha256_file, write_manifest
from .readers import byte_ranges, count_newlines, list_input_files, parse_range_spec, read_file, splittable
from .stats import IssueLog, PipelineStats, StageStats

logger = logging.getLogger(__name__)


def shard_specs(inputs, reader=None, shard_mb: float | None = None) -> list[str]:
    """One shard per input file (directories expanded, sorted as the local reader does) or builtin spec; an
    uncompressed file larger than `shard_mb` whose documents never span lines is cut into byte ranges at
    line ends (`readers.byte_ranges`: a seek per cut, no pass over the data), so several workers share it and
    each holds one range at a time."""
    out: list[str] = []
    for spec in inputs:
        if str(spec).startswith(BUILTIN_PREFIX):
            out.append(str(spec))
            continue
        for f in list_input_files(spec):
            size = f.stat().st_size
            if shard_mb and reader is not None and splittable(f, reader) and size > shard_mb * 1e6:
                pieces = math.ceil(size / (shard_mb * 1e6))  # equal pieces: no small remainder shard
                out += [r.spec(f) for r in byte_ranges(f, max(1, math.ceil(size / pieces)))]
            else:
                out.append(str(f))
    return out


AUTO_SHARDS = 16  # without --shard-mb, splittable input is cut into about this many shards...
AUTO_SHARD_MB = (1.0, 64.0)  # ...of at least / at most this many MB


def auto_shard_mb(inputs, reader) -> float:
    """The shard size when `--shard-mb` is not given: the splittable input's size over AUTO_SHARDS, within
    AUTO_SHARD_MB. Several shards per CPU let a CPU that finishes early take the next one: shards' work is
    uneven (dedup keeps the earliest copy, so later shards tokenize less), and with one shard per input file
    a run of few large files had one task per CPU per stage (docs/DATA.md, Ray timeline). It depends on the
    input alone, so a resumed run (any --workers) finds the same shards."""
    total = 0
    for spec in inputs:
        if not str(spec).startswith(BUILTIN_PREFIX):
            total += sum(f.stat().st_size for f in list_input_files(spec) if splittable(f, reader))
    lo, hi = AUTO_SHARD_MB
    return min(hi, max(lo, total / 1e6 / AUTO_SHARDS))


def _shard_documents(spec: str, cfg, issues: IssueLog, newlines_before: int = 0):
    """The documents of a shard; a byte range's lines are numbered from 1 + the newlines before it."""
    if spec.startswith(BUILTIN_PREFIX):
        return read_builtin(spec, issues)
    path, span = parse_range_spec(spec)
    if span is not None:
        span = dataclasses.replace(span, first_line=1 + newlines_before)
    return read_file(path, cfg.reader, issues, span=span)


def _count_task(spec: str) -> int:
    """Newlines in a byte-range shard (a pass at memory / disk speed, one task per range, beside the scans)."""
    path, span = parse_range_spec(spec)
    return count_newlines(path, span.start, span.end)


def _counts_before(shards: list[str]) -> dict[int, list[int]]:
    """For each byte-range shard after the first of its file: the indices of its file's earlier ranges (their
    newline counts give its first line)."""
    earlier: dict[Path, list[int]] = {}
    out = {}
    for k, spec in enumerate(shards):
        if spec.startswith(BUILTIN_PREFIX):
            continue
        path, span = parse_range_spec(spec)
        if span is None:
            continue
        if span.start > 0:
            out[k] = list(earlier.get(path, []))
        earlier.setdefault(path, []).append(k)
    return out


SHARD_ATTEMPTS = 3  # a shard whose task raises or dies is submitted again, at most this many times in all
FAULT_ENV = "PANGU_RAY_TEST_FAULT"  # tests only: "<stage>:<shard>:<times>[:exit][,...]": that shard's task
#   raises (or, with ":exit", kills its worker process) on its first <times> attempts; "driver:<stage>:<n>": the
#   driver SIGKILLs itself once <n> shards of <stage> are done (a driver that dies, deterministically)


def _injected_fault(fault: str, stage: str, shard: int, attempt: int) -> None:
    """The test hook (`FAULT_ENV`, read on the driver and passed to the task): fail the first attempts."""
    for item in filter(None, fault.split(",")):
        want_stage, want_shard, times, *how = item.split(":")
        if want_stage == stage and int(want_shard) == shard and attempt < int(times):
            if how == ["exit"]:
                os._exit(1)  # a worker that dies, not one that raises
            raise OSError(f"injected fault ({FAULT_ENV}={item}, attempt {attempt + 1})")


# ---- timeline (docs/DATA.md "Ray timeline") ----------------------------------------------
TIMELINE: dict = {"phases": [], "tasks": []}  # the last run_pipeline_ray of this (driver) process


def _phase(name: str) -> None:
    """The driver reached `name` (wall clock, comparable with the tasks' times on one machine)."""
    TIMELINE["phases"].append((name, time.time()))


def _timing(stage: str, k: int, start: float, warm: float) -> dict:
    """What a task reports of its own time: its worker, when the worker process started, the warm-up (the
    per-worker caches it had to build first) and the task's start and end."""
    try:
        import psutil

        born = psutil.Process().create_time()
    except Exception:  # psutil is Ray's dependency, but the timeline must never fail a shard
        born = None
    return {"stage": stage, "shard": k, "pid": os.getpid(), "born": born, "start": start, "end": time.time(),
            "warm_s": round(warm, 3)}


# ---- per-worker caches -------------------------------------------------------------
_WORKER_CACHE: dict = {}


def _cached(kind: str, key, make):
    """One object per worker process and key (a Ray worker runs many tasks: the jieba dictionary, the
    SentencePiece model and the cleaning regexes load once per worker, not once per shard)."""
    k = (kind, key)
    if k not in _WORKER_CACHE:
        _WORKER_CACHE[k] = make()
    return _WORKER_CACHE[k]


def _codec(vocab_file):
    from ..tokenizer import PanGuSentencePiece

    return _cached("codec", str(vocab_file), lambda: PanGuSentencePiece(vocab_file))


def _vocabulary(vocab_file) -> SimpleNamespace:
    """What the driver needs of the tokenizer (the manifest's vocabulary file and size, the token dtype): the
    SentencePiece model alone, without the segmenter's 55 MB of tables."""
    from ..tokenizer.core import load_sentencepiece

    path, sp = load_sentencepiece(vocab_file)
    return SimpleNamespace(vocab_file=path, vocab_size=sp.get_piece_size())


def _cleaner(cfg):
    return _cached("cleaner", repr(cfg.cleaning), lambda: Cleaner(cfg.cleaning))


# ---- small JSON records that mark a shard's stage done ------------------------------------
def _write_record(path: Path, record: dict) -> None:
    """JSON written to a temporary name and renamed: a record exists whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _read_record(path: Path, files: dict, what: str, spec: str):
    """The record at `path` if it parses and each of `files` ({record field: path}) has the sha256 the record
    names; else None, with a line saying why the shard is done again (nothing is unpickled)."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for field, f in files.items():
            if sha256_file(f) != record[field]:
                raise ValueError(f"{f.name} does not match its sha256 in {path.name}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("prepare-data --engine ray: %s of shard %s is corrupt or partial (%s); doing it again",
                       what, spec, " ".join(str(exc).split())[:200])
        return None
    return record


def _reusable(n: int, done: str, record_of) -> tuple[dict, list]:
    """Driver resume: ({shard: its verified record of an earlier run}, [shards to run]). `record_of(k)`
    gives (the record or None when missing / unverified, whether it was written for these settings)."""
    kept, todo = {}, []
    for k in range(n):
        rec, matches = record_of(k)
        if rec is not None and matches(rec):
            kept[k] = rec
        else:
            todo.append(k)
    if kept:
        logger.info("prepare-data --engine ray: resuming: %d of %d shards already %s", len(kept), n, done)
    return kept, todo


def _selection_digest(drop: np.ndarray, wanted: np.ndarray) -> str:
    return hashlib.sha256(drop.astype(np.int64).tobytes() + b"|" + wanted.astype(np.int64).tobytes()).hexdigest()


# ---- stage 1: scan ---------------------------------------------------------------------
def _scan_task(cfg, k: int, spec: str, work_dir: str, fault: str = "", attempt: int = 0, final: bool = True,
               *newline_counts: int) -> dict:
    """Read + clean + quality + MinHash one shard: survivors to work/<k>.jsonl, signatures to work/<k>.sigs.npy,
    then the record work/<k>.scan.json (returned too). An attempt that is not the `final` one raises its error
    (to be retried); the final one reports it as the shard's (`error`, with file and line) and keeps nothing
    of the shard (no record is written, so a resumed run scans it again). `newline_counts`: of the file's
    byte ranges before this one (Ray passes `_count_task` results), so its refs and issues keep the lines of
    the whole file."""
    from .pipeline import CHUNK_DOCS, _build_quality_filter, _chunks

    work = Path(work_dir)
    start = time.time()
    issues, read, clean, quality = IssueLog(), StageStats("read"), StageStats("clean"), StageStats("quality")
    cleaner = _cleaner(cfg) if "clean" in cfg.stages else None
    if cleaner is not None:
        cleaner._regexes()  # built once per worker: the timeline counts it as warm-up, not as this shard's work
    if "dedup" in cfg.stages:
        minhash_values("", cfg.dedup)  # the permutations and the compiled loop, once per worker
    warm = time.time() - start
    ids, chars, sigs, last, n = [], [], [], None, 0
    text_path, sigs_path = work / f"{k:05d}.jsonl", work / f"{k:05d}.sigs.npy"
    scores_fh = open(work / f"{k:05d}.scores.jsonl", "w", encoding="utf-8") if "quality" in cfg.stages else None
    try:
        qdir = work / f"quality-{k:05d}"
        qdir.mkdir(exist_ok=True)
        qfilter = _build_quality_filter(cfg, qdir, scores_fh)
        _injected_fault(fault, "scan", k, attempt)
        with open(text_path, "w", encoding="utf-8") as out:
            for chunk in _chunks(_shard_documents(spec, cfg, issues, sum(newline_counts)), CHUNK_DOCS):
                for doc in chunk:
                    doc.doc_id, n, last = n, n + 1, doc.ref  # shard-local id; the driver adds the offset
                    read.count_in(doc)
                    read.count_out(doc)
                kept, st = clean_chunk(cleaner, chunk) if cleaner is not None else (chunk, StageStats("clean"))
                clean.merge(st)
                if qfilter is not None:
                    kept = qfilter.filter(kept, quality)
                for d in kept:
                    ids.append(d.doc_id)
                    chars.append(len(d.text))
                    if "dedup" in cfg.stages:
                        sigs.append(np.asarray(minhash_values(d.text, cfg.dedup), dtype=np.uint64))
                    out.write(d.to_json() + "\n")
        error = None
    except Exception as exc:  # the shard fails alone; its partial survivors are discarded
        if not final:
            raise
        where = f" (after {last})" if last else ""
        error, n, ids, chars, sigs = f"{type(exc).__name__}: {exc}{where}", 0, [], [], []
        text_path.write_text("", encoding="utf-8")
        read, clean, quality = StageStats("read"), StageStats("clean"), StageStats("quality")
    finally:
        if scores_fh is not None:
            scores_fh.close()
    np.save(sigs_path, np.asarray(sigs, np.uint64).reshape(len(sigs), cfg.dedup.num_perm), allow_pickle=False)
    line = int(last.rsplit(":", 1)[1]) if last and last.rsplit(":", 1)[-1].isdigit() else None
    record = {"shard": k, "spec": spec, "n_read": n, "ids": ids, "chars": chars, "error": error, "line": line,
              "stats": {"read": read.to_dict(), "clean": clean.to_dict(), "quality": quality.to_dict(),
                        "issues": issues.to_dict()},
              "text_sha256": sha256_file(text_path), "sigs_sha256": sha256_file(sigs_path),
              "timing": _timing("scan", k, start, warm)}
    if error is None:
        _write_record(work / f"{k:05d}.scan.json", record)
    return record


def _failed_scan(k: int, spec: str, work: Path, error: str) -> dict:
    """The record of a shard whose last attempt's worker died: nothing of it is kept."""
    (work / f"{k:05d}.jsonl").write_text("", encoding="utf-8")
    np.save(work / f"{k:05d}.sigs.npy", np.zeros((0, 1), np.uint64), allow_pickle=False)
    empty = {n: StageStats(n).to_dict() for n in ("read", "clean", "quality")}
    return {"shard": k, "spec": spec, "n_read": 0, "ids": [], "chars": [], "error": error, "line": None,
            "stats": {**empty, "issues": IssueLog().to_dict()}}


# ---- stage 2: dedup ------------------------------------------------------------------------
def _band_task(sigs_path: str, ids: np.ndarray, base: int, ranges: list, parts: int):
    """One shard's (band key, document id) rows, split into `parts` by key: the map side of the shuffle."""
    sigs = np.load(sigs_path, mmap_mode="r", allow_pickle=False)  # [docs, num_perm]
    h1, h2 = band_keys(np.asarray(sigs), ranges)  # [bands, docs] each
    docs = np.broadcast_to(base + np.asarray(ids, np.int64), h1.shape)
    h1, h2, docs = h1.ravel(), h2.ravel(), docs.ravel()
    which = h1 % np.uint64(parts)
    out = [np.stack([h1[which == p], h2[which == p], docs[which == p].astype(np.uint64)]) for p in range(parts)]
    return out if parts > 1 else out[0]


def _bucket_task(index: dict, threshold: float, verify: bool, *pieces: np.ndarray) -> tuple:
    """The reduce side: all rows of one key range -> (candidate pairs [m, 2] (a < b) of every bucket, the ones
    of them that pass the Jaccard check [v, 2]). The check runs here, in parallel over the reducers, instead of
    serially on the driver (at 64 MB of the bench corpus it was half of the driver's dedup time)."""
    rows = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.uint64)  # [3, rows]
    candidates = unique_pairs(bucket_pairs(rows[0], rows[1], rows[2].astype(np.int64)))
    return candidates, _verify(candidates, index, threshold, verify)


def _signature_index(scans: dict, work: Path) -> dict:
    """Where each document's signature row is: for every shard with survivors (an empty or failed shard has the
    same offset as the next one), its first global id, its `.sigs.npy` and its shard-local ids (8 B a
    document). Shipped to each reducer once, through the object store."""
    kept = [k for k in sorted(scans) if len(scans[k]["ids"])]
    return {"starts": np.asarray([scans[k]["offset"] for k in kept], np.int64),
            "paths": [str(work / f"{k:05d}.sigs.npy") for k in kept],
            "ids": [np.asarray(scans[k]["ids"], np.int64) for k in kept]}


def _verify(candidates: np.ndarray, index: dict, threshold: float, verify: bool, chunk: int = 1 << 14) -> np.ndarray:
    """The candidate pairs [m, 2] whose estimated Jaccard (share of equal signature positions) passes
    `threshold`, in their order; signatures read (memory-mapped) for those documents only."""
    candidates = np.asarray(candidates, np.int64).reshape(-1, 2)
    if not verify or not len(candidates):
        return candidates
    starts = index["starts"]  # [shards] first global id of each
    wanted = np.unique(candidates)  # [docs] sorted global ids
    which = np.searchsorted(starts, wanted, side="right") - 1  # [docs] index into starts
    sigs = None  # [docs, num_perm] the wanted documents' signatures, in `wanted` order
    for i in np.unique(which).tolist():
        table = np.load(index["paths"][i], mmap_mode="r", allow_pickle=False)  # [shard docs, num_perm]
        if sigs is None:
            sigs = np.empty((len(wanted), table.shape[1]), table.dtype)
        sel = which == i
        sigs[sel] = table[np.searchsorted(index["ids"][i], wanted[sel] - starts[i])]
    ia, ib = np.searchsorted(wanted, candidates[:, 0]), np.searchsorted(wanted, candidates[:, 1])  # [m] rows
    return candidates[jaccard_passes(sigs, ia, ib, threshold, chunk)]


# ---- stage 3: tokenize ---------------------------------------------------------------------------
def _tokenize_task(cfg, k: int, spec: str, work_dir: str, shards_dir: str, offset: int, drop: np.ndarray,
                   wanted: np.ndarray, fault: str = "", attempt: int = 0) -> dict:
    """Drop the shard's duplicates, tokenize the rest into shards/<k>.bin/.idx, then write shards/<k>.json."""
    from .pipeline import TOKENIZE_BATCH_CHARS, _text_batches, write_document

    work = Path(work_dir)
    start = time.time()
    drop_set, wanted_set = set(drop.tolist()), set(wanted.tolist())
    codec = _codec(cfg.vocab_file)
    warm = time.time() - start
    st, lengths, refs = StageStats("tokenize"), [], {}
    prefix = Path(shards_dir) / f"{k:05d}"
    _injected_fault(fault, "tokenize", k, attempt)

    def survivors():
        with open(work / f"{k:05d}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                gid = offset + rec["id"]
                if gid in wanted_set:
                    refs[str(gid)] = {"ref": rec["ref"], "preview": rec["text"][:40]}
                if gid not in drop_set:
                    yield rec

    with IndexedDatasetBuilder(prefix, dtype_for_vocab(codec.vocab_size)) as builder:
        for batch in _text_batches(survivors(), TOKENIZE_BATCH_CHARS):
            texts = [r["text"] for r in batch]
            for rec, ids in zip(batch, codec.encode_many(texts, source=f"{spec} documents", start=0)):
                write_document(builder, st, lengths, rec["text"], ids, cfg.separator_id)
    record = {"shard": k, "lengths": lengths, "stats": st.to_dict(), "refs": refs,
              "selection": _selection_digest(drop, wanted),
              "bin_sha256": sha256_file(f"{prefix}.bin"), "idx_sha256": sha256_file(f"{prefix}.idx"),
              "timing": _timing("tokenize", k, start, warm)}
    _write_record(Path(shards_dir) / f"{k:05d}.json", record)
    return record


# ---- the driver -----------------------------------------------------------------------------------
def _describe(exc) -> str:
    """One line for a failed task: the task's own exception when it raised, else Ray's (a dead worker)."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _run_shards(ray, stage: str, todo: list[int], submit, shards: list[str], stats: PipelineStats, last_failure,
                submitted=None):
    """Run `submit(k, attempt) -> ObjectRef` for every shard in `todo`; a task that raises or whose worker
    dies is logged and submitted again (SHARD_ATTEMPTS in all); `last_failure(k, error)` gives the result
    of a shard whose last attempt failed (or raises); `submitted()` is called once the first tasks are out
    (the driver's own work then overlaps them). Returns {k: result}."""
    kill_at = [int(f.split(":")[2]) for f in os.environ.get(FAULT_ENV, "").split(",") if f.startswith(f"driver:{stage}:")]
    # the test hook submits no more than it lets finish, so exactly kill_at shards are done when it kills
    window = kill_at[0] if kill_at else len(todo)
    waiting = list(todo[window:])
    pending = {submit(k, 0): (k, 0) for k in todo[:window]}
    if submitted is not None:
        submitted()
    out = {}
    while pending:
        if kill_at and len(out) >= kill_at[0]:
            os.kill(os.getpid(), signal.SIGKILL)  # the test hook: a driver killed mid-run
        done, _ = ray.wait(list(pending), num_returns=1)
        k, attempt = pending.pop(done[0])
        try:
            out[k] = ray.get(done[0])
            if isinstance(out[k], dict) and "timing" in out[k]:
                TIMELINE["tasks"].append(out[k]["timing"])
        except ray.exceptions.RayError as exc:
            error = _describe(exc)
            if attempt + 1 < SHARD_ATTEMPTS:
                logger.warning("prepare-data --engine ray: %s of shard %s failed (attempt %d of %d: %s); retried",
                               stage, shards[k], attempt + 1, SHARD_ATTEMPTS, error)
                stats.summary["shard retries"] = stats.summary.get("shard retries", 0) + 1
                pending[submit(k, attempt + 1)] = (k, attempt + 1)
                continue
            out[k] = last_failure(k, error)
        if waiting:
            nxt = waiting.pop(0)
            pending[submit(nxt, 0)] = (nxt, 0)
    return out


def _merge_issues(into: IssueLog, other: IssueLog) -> None:
    into.counts.update(other.counts)
    for kind, examples in other.examples.items():
        bucket = into.examples.setdefault(kind, [])
        bucket += examples[:max(0, into.max_examples - len(bucket))]


def _connect(address: str | None, workers: int):
    try:
        import ray
    except ImportError as exc:
        raise UsageError(f"prepare-data --engine ray: Ray is not installed ({exc}); "
                         "pip install 'paddle-pangu[ray]'") from None

    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:  # unreachable GCS, wrong auth token (a ConnectionError)
                raise UsageError(f"prepare-data --ray-address {address}: cannot join the Ray cluster "
                                 f"({' '.join(str(exc).split())[:300]}); start it with `ray start --head` and "
                                 "pass the address it prints (with its RAY_AUTH_TOKEN if token auth is on)") from None
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    logger.info("prepare-data --engine ray: %s Ray cluster %s, %d CPUs", "joined" if address else "started",
                ray.get_runtime_context().gcs_address, int(ray.cluster_resources().get("CPU", 0)))
    return ray


def _partitions(ray) -> int:
    """Reducers of the band-key hash shuffle: two per CPU of the cluster."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _scan(ray, cfg, shards: list[str], work: Path, stats: PipelineStats, submitted=None) -> dict:
    """Stage 1: every shard's scan record (verified ones of an earlier run reused); merges the stats.
    `submitted()`: called once the scan tasks are out."""
    fault = os.environ.get(FAULT_ENV, "")
    scans, todo = _reusable(len(shards), "scanned", lambda k: (
        _read_record(work / f"{k:05d}.scan.json", {"text_sha256": work / f"{k:05d}.jsonl",
                                                    "sigs_sha256": work / f"{k:05d}.sigs.npy"}, "the scan", shards[k]),
        lambda rec: rec.get("spec") == shards[k]))
    task = ray.remote(_scan_task).options(max_retries=0)
    # a byte range's first line: the newlines of its file's earlier ranges, counted by tasks submitted first
    # (Ray starts a range's scan once its counts are in); a range scanned in an earlier run needs none
    before = {k: ks for k, ks in _counts_before(shards).items() if k in set(todo)}
    count = ray.remote(_count_task).options(max_retries=SHARD_ATTEMPTS - 1)
    counts = {j: count.remote(shards[j]) for j in sorted({j for ks in before.values() for j in ks})}

    def submit(k, attempt):
        return task.remote(cfg, k, shards[k], str(work), fault, attempt, attempt == SHARD_ATTEMPTS - 1,
                           *[counts[j] for j in before.get(k, [])])

    scans.update(_run_shards(ray, "scan", todo, submit, shards, stats,
                             lambda k, error: _failed_scan(k, shards[k], work, error), submitted))
    _phase("scan: merge records")
    total = 0
    for k in range(len(shards)):
        r = scans[k]
        r["offset"] = total
        r["ids"], r["chars"] = np.asarray(r["ids"], np.int64), np.asarray(r["chars"], np.int64)  # 8 B a document
        for name in ("read", "clean", "quality"):
            if name in stats.stages:
                stats.stage(name).merge(StageStats.from_dict(name, r["stats"][name]))
        _merge_issues(stats.issues, IssueLog.from_dict(r["stats"]["issues"]))
        if r["error"]:
            stats.issues.add("shard_failed", shards[k], r["line"], r["error"])
        total += int(r["n_read"])
    stats.stage("read").extra["shards"] = len(shards)
    return scans


def _dedup(ray, cfg, scans: dict, work: Path,
           lsh: MinHashDeduplicator) -> tuple[DedupResult, tuple[int, int], dict]:
    """Stage 2 (module docstring); returns (result, (bands, rows), {dropped doc: chars}). `lsh` gives the local
    engine's b x r for the threshold."""
    ranges = lsh.ranges
    _phase("dedup: shuffle")
    parts = _partitions(ray)
    band = ray.remote(_band_task).options(num_returns=parts, max_retries=SHARD_ATTEMPTS - 1)
    bucket = ray.remote(_bucket_task).options(max_retries=SHARD_ATTEMPTS - 1)
    maps = [band.remote(str(work / f"{k:05d}.sigs.npy"), np.asarray(r["ids"], np.int64), r["offset"], ranges, parts)
            for k, r in sorted(scans.items()) if len(r["ids"])]
    maps = [m if isinstance(m, list) else [m] for m in maps]
    index = ray.put(_signature_index(scans, work))
    found = ray.get([bucket.remote(index, cfg.dedup.threshold, cfg.dedup.verify, *[m[p] for m in maps])
                     for p in range(parts)]) if maps else []
    _phase("dedup: join")
    # a pair can share buckets in several parts: unique over all of them (the check gives each the same answer)
    candidates, verified = ((unique_pairs(np.concatenate(column)) for column in zip(*found)) if found
                            else (np.zeros((0, 2), np.int64),) * 2)
    verified = [(int(a), int(b)) for a, b in verified.tolist()]
    result = clusters_from_pairs(sorted({d for pair in verified for d in pair}), verified)
    result.candidate_pairs, result.verified_pairs = len(candidates), len(verified)
    _phase("dedup: dropped chars")
    chars, dropped = {}, np.fromiter(result.drop, np.int64, len(result.drop))
    for k, r in scans.items():
        gids = r["offset"] + np.asarray(r["ids"], np.int64)
        hit = np.isin(gids, dropped)
        chars.update(zip(gids[hit].tolist(), np.asarray(r["chars"], np.int64)[hit].tolist()))
    return result, lsh.bands_rows, chars


def _tokenize(ray, cfg, shards, scans: dict, work: Path, shards_dir: Path, result: DedupResult, stats: PipelineStats):
    """Stage 3: per-shard .bin/.idx (verified ones of an earlier run reused); returns (lengths in input order,
    cluster refs)."""
    drop = np.asarray(sorted(result.drop), np.int64)
    wanted = np.asarray(sorted({d for c in result.clusters for d in c}), np.int64)
    fault = os.environ.get(FAULT_ENV, "")
    st = stats.start("tokenize")
    selection = {}
    for k in range(len(shards)):
        lo, hi = scans[k]["offset"], scans[k]["offset"] + int(scans[k]["n_read"])
        selection[k] = (drop[(drop >= lo) & (drop < hi)], wanted[(wanted >= lo) & (wanted < hi)])
    rows, todo = _reusable(len(shards), "tokenized", lambda k: (
        _read_record(shards_dir / f"{k:05d}.json", {"bin_sha256": shards_dir / f"{k:05d}.bin",
                                                    "idx_sha256": shards_dir / f"{k:05d}.idx"},
                     "the tokenized output", shards[k]),
        lambda rec: rec.get("selection") == _selection_digest(*selection[k])))
    task = ray.remote(_tokenize_task).options(max_retries=0)

    def submit(k, attempt):
        return task.remote(cfg, k, shards[k], str(work), str(shards_dir), scans[k]["offset"], *selection[k],
                           fault, attempt)

    def last_failure(k, error):
        raise DataError(f"prepare-data --engine ray: tokenizing shard {shards[k]} failed {SHARD_ATTEMPTS} times "
                        f"(last: {error})")

    rows.update(_run_shards(ray, "tokenize", todo, submit, shards, stats, last_failure))
    parts, refs = [], {}
    for k in range(len(shards)):
        st.merge(StageStats.from_dict("tokenize", rows[k]["stats"]))
        refs.update({int(g): v for g, v in rows[k]["refs"].items()})
        parts.append(np.asarray(rows[k]["lengths"], np.int64))
        rows[k] = None  # the records' Python lists go as soon as their lengths are an array
    lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)  # [documents], 8 B each
    st.extra["tokens"] = int(lengths.sum())
    stats.stop("tokenize")
    return lengths, refs


def _concatenate(shards_dir: Path, n_shards: int, prefix: Path, dtype) -> list[dict]:
    """`<name>.bin/.idx` = the shards' documents in input order; returns the shard list for the manifest."""
    listing = []
    with IndexedDatasetBuilder(prefix, dtype) as out:
        for k in range(n_shards):
            ds = IndexedDataset(shards_dir / f"{k:05d}")
            out.add_dataset(ds)
            listing.append({"prefix": f"shards/{k:05d}", "documents": len(ds)})
    return listing


class ShardFailedError(DataError):
    """Some shards failed; the dataset of the other shards was written. Names every failed file and line."""


def _check_supported(cfg, model) -> None:
    if model is not None:
        raise UsageError("prepare-data --engine ray: an in-memory perplexity model cannot be shipped to Ray "
                         "workers; pass --perplexity-model DIR")
    if cfg.max_docs is not None:
        raise UsageError("prepare-data --engine ray: --max-docs is a local-engine option (it needs the global "
                         "input order while reading); pass fewer --input files instead")
    if "tokenize" not in cfg.stages:
        raise UsageError("prepare-data --engine ray: the tokenize stage is required (documents.jsonl output "
                         "is local-engine only)")


def _run_stages(ray, cfg, tmp: Path, stats: PipelineStats, shards: list[str]) -> None:
    from .pipeline import _dedup_stats, _finish_dataset, _write_clusters, warn_undecodable

    work, shards_dir = tmp / "work", tmp / "shards"
    work.mkdir(exist_ok=True)
    shards_dir.mkdir(exist_ok=True)
    # the driver's own start-up (b x r for the threshold, from its cache after the first run; the vocabulary
    # for the manifest: the SentencePiece model alone, the driver segments nothing) runs in a thread while the
    # driver waits on the scan tasks, and only once they are submitted (it holds the GIL in bursts: submitting
    # behind it delayed the first task). It is kept small: on a machine with as many CPUs as workers its CPU
    # time is taken from the scan (session 9: 0.8 CPU-s, the scipy import and the segmenter's tables, was
    # ~0.3 s of a 2-CPU 16 MB run's scan on a 2-core machine)
    from concurrent.futures import ThreadPoolExecutor

    ahead: dict = {}

    def prefetch():
        if ahead:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="pangu-driver-prefetch")
        if "dedup" in cfg.stages:
            ahead["lsh"] = pool.submit(MinHashDeduplicator, cfg.dedup)
        ahead["vocab"] = pool.submit(_vocabulary, cfg.vocab_file)
        pool.shutdown(wait=False)

    t0 = time.perf_counter()
    _phase("scan")
    scans = _scan(ray, cfg, shards, work, stats, prefetch)
    prefetch()  # (already done unless no scan task was submitted)
    stats.summary["pass 1 seconds (read+clean+quality+minhash)"] = round(time.perf_counter() - t0, 1)
    for name in ("clean", "quality"):
        if name not in cfg.stages:
            stats.stages.pop(name, None)
    warn_undecodable(cfg, stats)
    result = DedupResult([], set())
    if "dedup" in cfg.stages:
        st = stats.start("dedup")
        _phase("dedup")
        result, bands_rows, dropped_chars = _dedup(ray, cfg, scans, work, ahead["lsh"].result())
        _dedup_stats(st, result, bands_rows, stats, dropped_chars)
        stats.stop("dedup")
    _phase("tokenize")
    lengths, refs = _tokenize(ray, cfg, shards, scans, work, shards_dir, result, stats)
    _phase("clusters file")
    _write_clusters(tmp / "dedup_clusters.jsonl", result.clusters, refs)
    _phase("driver vocabulary")
    vocab = ahead["vocab"].result()
    _phase("concatenate")
    listing = _concatenate(shards_dir, len(shards), tmp / cfg.name, dtype_for_vocab(vocab.vocab_size))
    _phase("finish (split, manifest)")
    _finish_dataset(cfg, tmp, stats, lengths, vocab)
    _add_shards_to_manifest(tmp, shards, listing)
    (tmp / RESUME_FILE).unlink()
    if not cfg.keep_work:
        shutil.rmtree(work)


def _add_shards_to_manifest(tmp: Path, shards: list[str], listing: list[dict]) -> None:
    manifest = json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))
    files = list(manifest.pop("files"))
    for spec, entry in zip(shards, listing):
        entry["input"] = spec
        files += [entry["prefix"] + ".bin", entry["prefix"] + ".idx"]
    manifest.pop("format", None)
    manifest.pop("complete", None)
    write_manifest(tmp, {**manifest, "engine": "ray", "shards": listing, "files": files})


# ---- resume -----------------------------------------------------------------------------------------
RESUME_FILE = "resume.json"


def _resume_key(cfg, shards: list[str]) -> dict:
    """`pipeline.resume_key` over the shards: each spec with its file's size and mtime (an input edited since
    is not mixed with the old scan)."""
    from .pipeline import resume_key

    return resume_key("ray", cfg, [(spec, None if spec.startswith(BUILTIN_PREFIX) else parse_range_spec(spec)[0])
                                   for spec in shards])


def _partial_for(final: Path, key: dict) -> Path:
    """This run's partial directory: a dead driver's one with the same `resume.json` is adopted (renamed to
    this process's name); otherwise a fresh one. Partial directories of dead drivers that do not match are
    removed (`pipeline._remove_stale_partials`)."""
    from .pipeline import _remove_stale_partials, dead_partials

    mine = partial_dir(final)
    for old in dead_partials(final):
        try:
            same = json.loads((old / RESUME_FILE).read_text(encoding="utf-8")) == key
        except (OSError, ValueError):
            same = False
        if same:
            mine.rmdir()
            os.replace(old, mine)
            logger.warning("prepare-data --engine ray: resuming the interrupted run in %s (shards whose records "
                           "verify are kept, the rest are done again)", old)
            break
    _remove_stale_partials(final)
    _write_record(mine / RESUME_FILE, key)
    return mine


def run_pipeline_ray(cfg, model=None, address: str | None = None) -> PipelineStats:
    """`run_pipeline` on Ray (see the module docstring); same output, plus `shards/`."""
    from ..tokenizer.batch import default_num_workers
    from .pipeline import STAGES

    cfg.validate(has_model=model is not None)
    _check_supported(cfg, model)
    TIMELINE["phases"], TIMELINE["tasks"] = [], []
    _phase("start")
    final = Path(cfg.output)
    if final.exists() and not cfg.overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    ray = _connect(address, cfg.num_workers or default_num_workers())
    _phase("shard specs")
    shard_mb = cfg.shard_mb if cfg.shard_mb is not None else auto_shard_mb(cfg.inputs, cfg.reader)
    shards = shard_specs(cfg.inputs, cfg.reader, shard_mb)
    tmp = _partial_for(final, _resume_key(cfg, shards))
    stats = PipelineStats()
    for name in ("read",) + tuple(s for s in STAGES if s in cfg.stages):
        stats.stage(name)
    try:
        _run_stages(ray, cfg, tmp, stats, shards)
        _phase("commit")
        commit_dir(tmp, final, cfg.overwrite)
        _phase("end")
    except KeyboardInterrupt:  # Ctrl-C: kept, like a killed driver's, for the rerun to resume from
        logger.warning("prepare-data --engine ray: interrupted; the shards done so far are in %s: rerun the same "
                       "command to resume from them", tmp)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    failed = stats.issues.examples.get("shard_failed", [])
    if failed:
        where = "; ".join(f"{f['file']} line {f['line']}: {f['detail']}" for f in failed)
        raise ShardFailedError(f"prepare-data --engine ray: {len(failed)} shard(s) failed ({where}); the other "
                               f"shards were written to {final}; fix the file(s) and rerun with --overwrite")
    return stats
