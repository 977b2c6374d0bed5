"""`pangu prepare-data --engine ray`: the same stages as the local engine, on Ray Data.

One definition of every rule: each Ray task calls the local engine's own
functions (`readers.read_file` / `builtin.read_builtin`, `cleaning.clean_chunk`,
`pipeline._build_quality_filter`, `dedup.minhash_values`, the tokenizer,
`IndexedDatasetBuilder`, `pipeline._finish_dataset`). What is distributed:

  1. scan (one task per input file = shard): read, clean, quality-filter and
     MinHash; the survivors' text stays in the shard's work file, only ids,
     lengths and signatures come back;
  2. dedup: every signature is cut into the LSH bands (the same b x r as the
     local datasketch index), band keys are grouped with a Ray Data shuffle
     (`repartition(keys=[key])`, a hash shuffle, then one pass per block that
     groups its rows by key), each bucket emits its pairs verified by
     estimated Jaccard >= threshold (signatures move, text never does);
     the verified pairs (few) are joined into clusters on the driver with
     `dedup.clusters_from_pairs`, the rule the local index uses (first
     document of a cluster in input order is kept);
  3. tokenize (one task per shard): drop the shard's duplicates, tokenize,
     write `shards/<k>.bin/.idx`; the driver concatenates them in input order
     into `<name>.bin/.idx` (byte-identical to the local engine's) and writes
     the manifest (with the shard list).

A shard whose task raises is run again (SHARD_ATTEMPTS in all, each failure
logged); if its last attempt fails too it is reported (`shard_failed` issue:
file and line) and contributes nothing; the other shards' output is kept. A corrupt gzip is
handled by the reader itself, as locally (`unreadable_file`, file and line).
`--ray-address` joins a running cluster; otherwise a local one is started
with `num_workers` CPUs. The work files live under the output's partial
directory, which on a real cluster must be shared storage (docs/DATA.md).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from .builtin import BUILTIN_PREFIX, read_builtin
from .cleaning import Cleaner, clean_chunk
from .dedup import DedupResult, MinHashDeduplicator, clusters_from_pairs, minhash_values
from .indexed_dataset import IndexedDataset, IndexedDatasetBuilder, dtype_for_vocab
from .manifest import commit_dir, partial_dir, write_manifest
from .readers import list_input_files, read_file
from .stats import IssueLog, PipelineStats, StageStats

logger = logging.getLogger(__name__)


def shard_specs(inputs) -> list[str]:
    """One shard per input file (directories expanded, sorted as the local reader does) or builtin spec."""
    out: list[str] = []
    for spec in inputs:
        out += [str(spec)] if str(spec).startswith(BUILTIN_PREFIX) else [str(f) for f in list_input_files(spec)]
    return out


def _shard_documents(spec: str, cfg, issues: IssueLog):
    if spec.startswith(BUILTIN_PREFIX):
        return read_builtin(spec, issues)
    return read_file(Path(spec), cfg.reader, issues)


SHARD_ATTEMPTS = 3  # a shard whose task raises is run again, at most this many times in all, then reported
FAULT_ENV = "PANGU_RAY_TEST_FAULT"  # tests only: "<stage>:<shard>:<times>[,...]": that shard raises <times> times


def _injected_fault(row: dict, stage: str, attempt: int) -> None:
    """The test hook (`FAULT_ENV`, read on the driver and shipped in the row): raise on the first attempts."""
    for fault in filter(None, row.get("fault", "").split(",")):
        want_stage, shard, times = fault.split(":")
        if want_stage == stage and int(shard) == int(row["shard"]) and attempt < int(times):
            raise OSError(f"injected fault ({FAULT_ENV}={fault}, attempt {attempt + 1})")


def _scan_shard(row: dict) -> dict:
    """Task: `_scan_attempt`, run again when it raises, at most SHARD_ATTEMPTS times in all; the failed
    attempts' errors travel back (the driver logs them) and only the last attempt's output and stats count."""
    retried: list[str] = []
    for attempt in range(SHARD_ATTEMPTS):
        try:
            out = _scan_attempt(row, attempt, final=attempt == SHARD_ATTEMPTS - 1)
        except Exception as exc:  # noqa: BLE001 - an attempt before the last one: retried
            retried.append(f"{type(exc).__name__}: {exc}")
            continue
        out["retried"] = json.dumps(retried)
        return out
    raise AssertionError("unreachable: the last attempt never raises")


def _scan_attempt(row: dict, attempt: int = 0, final: bool = True) -> dict:
    """Read + clean + quality + MinHash one shard; survivors to its work file, metadata back.
    An attempt that is not the `final` one raises its error (to be retried); the final one reports it as the
    shard's (`shard_failed`, with file and line) and keeps nothing of the shard."""
    from .pipeline import CHUNK_DOCS, _build_quality_filter, _chunks

    cfg, k = pickle.loads(row["cfg"]), int(row["shard"])
    work = Path(row["work_dir"])
    issues, read, clean, quality = IssueLog(), StageStats("read"), StageStats("clean"), StageStats("quality")
    cleaner = Cleaner(cfg.cleaning) if "clean" in cfg.stages else None
    ids, chars, sigs, last = [], [], [], None
    scores_fh = open(work / f"{k:05d}.scores.jsonl", "w", encoding="utf-8") if "quality" in cfg.stages else None
    try:
        qdir = work / f"quality-{k:05d}"
        qdir.mkdir(exist_ok=True)
        qfilter = _build_quality_filter(cfg, qdir, scores_fh)
        n = 0
        _injected_fault(row, "scan", attempt)
        with open(work / f"{k:05d}.jsonl", "w", encoding="utf-8") as out:
            for chunk in _chunks(_shard_documents(row["spec"], cfg, issues), CHUNK_DOCS):
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
        where = f" (after {last})" if last else ""
        if not final:
            raise
        error, n, ids, chars, sigs = f"{type(exc).__name__}: {exc}{where}", 0, [], [], []
        (work / f"{k:05d}.jsonl").write_text("", encoding="utf-8")
        read, clean, quality = StageStats("read"), StageStats("clean"), StageStats("quality")
    finally:
        if scores_fh is not None:
            scores_fh.close()
    line = int(last.rsplit(":", 1)[1]) if last and last.rsplit(":", 1)[-1].isdigit() else None
    stats = {"read": read, "clean": clean, "quality": quality, "issues": issues, "error": error, "line": line}
    # arrays as bytes: Arrow blocks hold them without ragged-tensor conversions
    return {"shard": k, "n_read": n, "ids": np.asarray(ids, np.int64).tobytes(),
            "chars": np.asarray(chars, np.int64).tobytes(),
            "sigs": np.asarray(sigs, np.uint64).reshape(len(sigs), cfg.dedup.num_perm).tobytes(),
            "width": cfg.dedup.num_perm, "stats": pickle.dumps(stats)}


def _band_rows(row: dict, offsets: dict, ranges: list) -> list[dict]:
    """One row per (document, band): key = band number + the band's hash values, and the document id only.
    The signatures stay in the scan's blocks and are joined to the candidate pairs afterwards
    (`_verify`): a shuffle row is ~60 bytes instead of carrying the whole signature."""
    base, ids = offsets[int(row["shard"])], np.frombuffer(row["ids"], np.int64)
    sigs = np.frombuffer(row["sigs"], np.uint64).reshape(len(ids), int(row["width"]))
    out = []
    for local, sig in zip(ids, sigs):
        for b, (lo, hi) in enumerate(ranges):
            out.append({"key": f"{b}:{sig[lo:hi].tobytes().hex()}", "doc": base + int(local)})
    return out


def _bucket_pairs(batch: dict) -> dict:
    """A whole block of the hash shuffle on `key` (so every bucket is complete in it): the candidate pairs
    (a < b) of each bucket."""
    keys, docs = np.asarray(batch["key"]), np.asarray(batch["doc"], np.int64)
    a: list = []
    b: list = []
    if len(keys):
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        for g in np.flatnonzero(counts > 1):  # most buckets hold one document
            members = np.sort(docs[inverse == g])
            for i in range(len(members)):
                for j in range(i + 1, len(members)):
                    a.append(members[i])
                    b.append(members[j])
    return {"a": np.asarray(a, np.int64), "b": np.asarray(b, np.int64)}


def _signatures_of(scanned, offsets: dict, wanted: set) -> dict:
    """Signature [num_perm] of each document in `wanted` (global ids), read from the scan's blocks."""
    out = {}
    for r in scanned.select_columns(["shard", "ids", "sigs", "width"]).iter_rows():
        base, ids = offsets[int(r["shard"])], np.frombuffer(r["ids"], np.int64)
        sigs = np.frombuffer(r["sigs"], np.uint64).reshape(len(ids), int(r["width"]))
        for local, sig in zip(ids, sigs):
            if base + int(local) in wanted:
                out[base + int(local)] = sig
    return out


def _verify(candidates: set, sigs: dict, threshold: float, verify: bool) -> list:
    """The candidate pairs whose estimated Jaccard (equal signature positions) passes `threshold`."""
    ok = []
    for a, b in sorted(candidates):
        if not verify or np.count_nonzero(sigs[a] == sigs[b]) / len(sigs[a]) >= threshold:
            ok.append((a, b))
    return ok


def _tokenize_shard(row: dict) -> dict:
    """Task: `_tokenize_attempt`, run again when it raises, at most SHARD_ATTEMPTS times in all (each attempt
    rewrites the shard's .bin/.idx from the start); the last attempt's error fails the run."""
    retried: list[str] = []
    for attempt in range(SHARD_ATTEMPTS):
        try:
            out = _tokenize_attempt(row, attempt)
        except Exception as exc:  # noqa: BLE001
            if attempt == SHARD_ATTEMPTS - 1:
                raise
            retried.append(f"{type(exc).__name__}: {exc}")
            continue
        out["retried"] = json.dumps(retried)
        return out
    raise AssertionError("unreachable")


def _tokenize_attempt(row: dict, attempt: int = 0) -> dict:
    """Drop the shard's duplicates, tokenize the rest into shards/<k>.bin/.idx."""
    from ..tokenizer import PanGuSentencePiece
    from .pipeline import write_document

    cfg, k = pickle.loads(row["cfg"]), int(row["shard"])
    work = Path(row["work_dir"])
    drop, wanted = set(np.frombuffer(row["drop"], np.int64).tolist()), set(np.frombuffer(row["wanted"], np.int64).tolist())
    codec = PanGuSentencePiece(cfg.vocab_file)
    st, lengths, refs = StageStats("tokenize"), [], {}
    prefix = Path(row["shards_dir"]) / f"{k:05d}"
    _injected_fault(row, "tokenize", attempt)
    with open(work / f"{k:05d}.jsonl", encoding="utf-8") as fh, \
            IndexedDatasetBuilder(prefix, dtype_for_vocab(codec.vocab_size)) as builder:
        for line in fh:
            rec = json.loads(line)
            gid = int(row["offset"]) + rec["id"]
            if gid in wanted:
                refs[gid] = {"ref": rec["ref"], "preview": rec["text"][:40]}
            if gid in drop:
                continue
            write_document(builder, st, lengths, rec["text"], codec.encode_ids(rec["text"]), cfg.separator_id)
    return {"shard": k, "lengths": np.asarray(lengths, np.int64).tobytes(), "stats": pickle.dumps((st, refs))}


def _log_retries(stage: str, spec: str, retried: str, stats: PipelineStats) -> None:
    errors = json.loads(retried)
    for i, err in enumerate(errors):
        logger.warning("prepare-data --engine ray: %s of shard %s failed (attempt %d of %d: %s); retried",
                       stage, spec, i + 1, SHARD_ATTEMPTS, err)
    if errors:
        stats.summary["shard retries"] = stats.summary.get("shard retries", 0) + len(errors)


def _merge_issues(into: IssueLog, other: IssueLog) -> None:
    into.counts.update(other.counts)
    for kind, examples in other.examples.items():
        bucket = into.examples.setdefault(kind, [])
        bucket += examples[:max(0, into.max_examples - len(bucket))]


def _connect(address: str | None, workers: int):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"prepare-data --engine ray: Ray Data is not installed ({exc}); "
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
    ray.data.DataContext.get_current().enable_progress_bars = False
    logger.info("prepare-data --engine ray: %s Ray cluster %s, %d CPUs", "joined" if address else "started",
                ray.get_runtime_context().gcs_address, int(ray.cluster_resources().get("CPU", 0)))
    return ray


def _partitions(ray) -> int:
    """Blocks of the band-key hash shuffle: two per CPU of the cluster."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def _scan(ray, cfg, shards: list[str], work: Path, stats: PipelineStats):
    """Stage 1 on Ray; merges the shard stats in input order; returns (scan dataset, offsets, doc_chars)."""
    blob = pickle.dumps(cfg)
    fault = os.environ.get(FAULT_ENV, "")
    items = [{"shard": k, "spec": s, "cfg": blob, "work_dir": str(work), "fault": fault} for k, s in enumerate(shards)]
    scanned = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(_scan_shard).materialize()
    meta = sorted(scanned.select_columns(["shard", "n_read", "ids", "chars", "stats", "retried"]).take_all(),
                  key=lambda r: r["shard"])
    offsets, doc_chars, total = {}, {}, 0
    for r in meta:
        _log_retries("scan", shards[int(r["shard"])], r["retried"], stats)
        offsets[int(r["shard"])] = total
        s = pickle.loads(r["stats"])
        for name in ("read", "clean", "quality"):
            stats.stage(name).merge(s[name]) if name in stats.stages else None
        _merge_issues(stats.issues, s["issues"])
        if s["error"]:
            stats.issues.add("shard_failed", shards[int(r["shard"])], s["line"], s["error"])
        ids, chars = np.frombuffer(r["ids"], np.int64), np.frombuffer(r["chars"], np.int64)
        doc_chars.update({total + int(i): int(c) for i, c in zip(ids, chars)})
        total += int(r["n_read"])
    stats.stage("read").extra["shards"] = len(shards)
    return scanned, offsets, doc_chars


def _dedup(ray, cfg, scanned, offsets: dict, doc_chars: dict) -> tuple[DedupResult, tuple[int, int]]:
    """Stage 2: LSH banding as a Ray Data hash shuffle of (band key, document id); the candidate pairs are
    verified on the driver against the signatures of their documents only; clusters on the driver."""
    lsh = MinHashDeduplicator(cfg.dedup)  # the local engine's b x r for this threshold
    ranges = list(lsh.lsh.hashranges)
    pairs = (scanned.flat_map(_band_rows, fn_kwargs={"offsets": offsets, "ranges": ranges})
             .repartition(_partitions(ray), keys=["key"])  # hash shuffle: a bucket lands in one block
             .map_batches(_bucket_pairs, batch_size=None, batch_format="numpy")
             .take_all()) if doc_chars else []
    candidates = {(int(p["a"]), int(p["b"])) for p in pairs}
    sigs = _signatures_of(scanned, offsets, {d for pair in candidates for d in pair}) if candidates else {}
    verified = _verify(candidates, sigs, cfg.dedup.threshold, cfg.dedup.verify)
    result = clusters_from_pairs(sorted(doc_chars), verified)
    result.candidate_pairs, result.verified_pairs = len(candidates), len(verified)
    return result, lsh.bands_rows


def _tokenize(ray, cfg, shards, offsets, work: Path, shards_dir: Path, result: DedupResult, stats: PipelineStats):
    """Stage 3 on Ray: per-shard .bin/.idx; returns (document lengths in input order, cluster refs)."""
    blob = pickle.dumps(cfg)
    drop = np.asarray(sorted(result.drop), np.int64)
    wanted = np.asarray(sorted({d for c in result.clusters for d in c}), np.int64)
    items, fault = [], os.environ.get(FAULT_ENV, "")
    for k in range(len(shards)):
        lo, hi = offsets[k], offsets.get(k + 1, np.iinfo(np.int64).max)
        items.append({"shard": k, "cfg": blob, "work_dir": str(work), "shards_dir": str(shards_dir), "offset": lo,
                      "fault": fault,
                      "drop": drop[(drop >= lo) & (drop < hi)].tobytes(),
                      "wanted": wanted[(wanted >= lo) & (wanted < hi)].tobytes()})
    st = stats.start("tokenize")
    rows = sorted(ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(_tokenize_shard).take_all(),
                  key=lambda r: r["shard"])
    lengths, refs = [], {}
    for r in rows:
        _log_retries("tokenize", shards[int(r["shard"])], r["retried"], stats)
        shard_st, shard_refs = pickle.loads(r["stats"])
        st.merge(shard_st)
        refs.update(shard_refs)
        lengths += np.frombuffer(r["lengths"], np.int64).tolist()
    st.extra["tokens"] = int(sum(lengths))
    stats.stop("tokenize")
    return lengths, refs


def _concatenate(shards_dir: Path, n_shards: int, prefix: Path, dtype) -> list[dict]:
    """`<name>.bin/.idx` = the shards' documents in input order; returns the shard list for the manifest."""
    listing = []
    with IndexedDatasetBuilder(prefix, dtype) as out:
        for k in range(n_shards):
            ds = IndexedDataset(shards_dir / f"{k:05d}")
            for i in range(len(ds)):
                out.add_document(ds[i])
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


def _run_stages(ray, cfg, tmp: Path, stats: PipelineStats) -> None:
    from ..tokenizer import PanGuSentencePiece
    from .pipeline import _dedup_stats, _finish_dataset, _write_clusters, warn_undecodable

    shards = shard_specs(cfg.inputs)
    work, shards_dir = tmp / "work", tmp / "shards"
    work.mkdir()
    shards_dir.mkdir()
    t0 = time.perf_counter()
    scanned, offsets, doc_chars = _scan(ray, cfg, shards, work, stats)
    stats.summary["pass 1 seconds (read+clean+quality+minhash)"] = round(time.perf_counter() - t0, 1)
    for name in ("clean", "quality"):
        if name not in cfg.stages:
            stats.stages.pop(name, None)
    warn_undecodable(cfg, stats)
    result = DedupResult([], set())
    if "dedup" in cfg.stages:
        st = stats.start("dedup")
        result, bands_rows = _dedup(ray, cfg, scanned, offsets, doc_chars)
        _dedup_stats(st, result, bands_rows, stats, doc_chars)
        stats.stop("dedup")
    lengths, refs = _tokenize(ray, cfg, shards, offsets, work, shards_dir, result, stats)
    _write_clusters(tmp / "dedup_clusters.jsonl", result.clusters, refs)
    codec = PanGuSentencePiece(cfg.vocab_file)
    listing = _concatenate(shards_dir, len(shards), tmp / cfg.name, dtype_for_vocab(codec.vocab_size))
    _finish_dataset(cfg, tmp, stats, lengths, codec)
    _add_shards_to_manifest(tmp, shards, listing)
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


def run_pipeline_ray(cfg, model=None, address: str | None = None) -> PipelineStats:
    """`run_pipeline` on Ray (see the module docstring); same output, plus `shards/`."""
    from ..tokenizer.batch import default_num_workers
    from .pipeline import STAGES, _remove_stale_partials

    cfg.validate(has_model=model is not None)
    _check_supported(cfg, model)
    final = Path(cfg.output)
    if final.exists() and not cfg.overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    ray = _connect(address, cfg.num_workers or default_num_workers())
    tmp = partial_dir(final)
    stats = PipelineStats()
    for name in ("read",) + tuple(s for s in STAGES if s in cfg.stages):
        stats.stage(name)
    try:
        _run_stages(ray, cfg, tmp, stats)
        commit_dir(tmp, final, cfg.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    failed = stats.issues.examples.get("shard_failed", [])
    if failed:
        where = "; ".join(f"{f['file']} line {f['line']}: {f['detail']}" for f in failed)
        raise ShardFailedError(f"prepare-data --engine ray: {len(failed)} shard(s) failed ({where}); the other "
                               f"shards were written to {final}; fix the file(s) and rerun with --overwrite")
    return stats
