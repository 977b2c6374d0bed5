"""`pangu prepare-data`: read -> clean -> quality -> dedup -> tokenize, with stats and a manifest.

Two streaming passes over the data:

  pass 1 (per document, parallel): read, clean and MinHash in worker
          processes (bounded number of chunks in flight, so memory stays flat),
          quality-score in the main process, add the signatures to the LSH
          index, and write the survivors to a work file;
  global: the dedup decision (clusters from the LSH index);
  pass 2: stream the work file again, skip the near-duplicates, tokenize with
          a pool of tokenizer processes and append to `<name>.bin/.idx`
          (separator token 9 after every document, REF "Packing").

Everything is written under `<output>.partial-<pid>` and renamed to
`<output>` only after `manifest.json` (counts, sha256 checksums) is written.
Without the "tokenize" stage the output is `documents.jsonl` instead of a
token dataset, so each stage can be run on its own and chained by hand.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DataError
from .builtin import BUILTIN_PREFIX, builtin_size_bytes, read_builtin
from .cleaning import Cleaner, CleaningConfig, clean_chunk
from .dedup import DedupConfig, MinHashDeduplicator, minhash_values
from .indexed_dataset import IndexedDatasetBuilder, dtype_for_vocab
from ..io.durable import atomic_write_text
from .manifest import commit_dir, partial_dir, sha256_file, write_manifest
from .packing import DEFAULT_SPLIT, DEFAULT_SPLIT_NAMES, split_documents
from .quality import PerplexityScorer, QualityConfig, QualityFilter, ScoreCache, TextClassifier, read_examples
from .readers import ProgressTracker, ReaderConfig, input_size_bytes, read_documents
from .stats import Document, IssueLog, PipelineStats, StageStats

logger = logging.getLogger(__name__)

STAGES = ("clean", "quality", "dedup", "tokenize")
CHUNK_DOCS = 128
TOKENIZE_BATCH_CHARS = 2_000_000


@dataclasses.dataclass
class PipelineConfig:
    """Everything `prepare-data` needs; see `paddle_pangu.cli.prepare_data` for the flags.

    Attributes:
        inputs: files, directories or builtin:<name> specs.
        output: dataset directory to create.
        name: file stem of `<name>.bin/.idx`.
        stages: subset of STAGES, in pipeline order ("quality" needs a scorer).
        perplexity_model: model directory for the perplexity filter.
        classifier: saved TextClassifier path (without suffix).
        classifier_good / classifier_bad: example files to train one on the fly.
        scores_from: an earlier scores.jsonl to reuse instead of rescoring.
        vocab_file: tokenizer model (None: the installed pcl-pangu one).
        separator_id: appended after every document (REF: 9 `<eot>`).
        split / split_seed: document split ratios recorded in the manifest.
        num_workers: worker processes (None: usable CPUs).
        max_docs: stop reading after this many documents (quick runs).
        keep_work: keep the intermediate work files in the output.
        shard_mb: --engine ray: an uncompressed input file larger than this is cut into byte ranges at
            line ends, one shard each (same output; the local engine reads it as one stream). None: the
            splittable input's size / 16, within 1-64 MB (`ray_engine.auto_shard_mb`).
    """

    inputs: list[str]
    output: str
    name: str = "corpus"
    reader: ReaderConfig = dataclasses.field(default_factory=ReaderConfig)
    cleaning: CleaningConfig = dataclasses.field(default_factory=CleaningConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    stages: tuple[str, ...] = ("clean", "dedup", "tokenize")
    perplexity_model: str | None = None
    classifier: str | None = None
    classifier_good: str | None = None
    classifier_bad: str | None = None
    scores_from: str | None = None
    vocab_file: str | None = None
    separator_id: int = 9
    split: tuple[float, ...] = DEFAULT_SPLIT
    split_seed: int = 1234
    num_workers: int | None = None
    max_docs: int | None = None
    overwrite: bool = False
    keep_work: bool = False
    progress: bool = True
    shard_mb: float | None = None
    max_undecodable_fraction: float = 0.01  # warn above this share of input lines not in reader.encoding

    def validate(self, has_model: bool = False) -> None:
        """Raise ValueError naming the flag that is wrong (`has_model`: an in-memory LM is given)."""
        if not self.inputs:
            raise ValueError("prepare-data: no --input given")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"prepare-data --stages: unknown {unknown}, expected a subset of {STAGES}")
        scorer = has_model or self.perplexity_model or self.classifier or self.classifier_good or self.scores_from
        if "quality" in self.stages and not scorer:
            raise ValueError("prepare-data: the quality stage needs --perplexity-model, --classifier, "
                             "--classifier-good/--classifier-bad or --scores-from")
        if bool(self.classifier_good) != bool(self.classifier_bad):
            raise ValueError("prepare-data: --classifier-good and --classifier-bad go together")
        if not self.name or "/" in self.name:
            raise ValueError(f"prepare-data --name {self.name!r}: expected a plain file stem")
        if self.shard_mb is not None and not self.shard_mb > 0:
            raise ValueError(f"prepare-data --shard-mb {self.shard_mb}: expected a size in MB > 0")
        self.reader.validate()
        self.cleaning.validate()
        self.dedup.validate()


# ---- worker side --------------------------------------------------------------
_worker_state: dict = {}


def _init_worker(cleaner: Cleaner | None, dedup_cfg: DedupConfig | None) -> None:
    _worker_state.update(cleaner=cleaner, dedup=dedup_cfg)


def _work_chunk(docs: list[Document]):
    """Clean a chunk and compute MinHash values of the survivors."""
    cleaner, dedup_cfg = _worker_state["cleaner"], _worker_state["dedup"]
    if cleaner is not None:
        kept, stats = clean_chunk(cleaner, docs)
    else:
        kept, stats = docs, StageStats("clean")
    sigs = [minhash_values(d.text, dedup_cfg) for d in kept] if dedup_cfg is not None else None
    return kept, stats, sigs


def _bounded_map(pool, fn, items: Iterable, window: int) -> Iterator:
    """Ordered map with at most `window` tasks in flight (Pool.imap would read the whole input ahead)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def start_method() -> str:
    """"fork" (no re-import, jieba dictionary inherited) unless paddle is loaded: its threads make fork unsafe."""
    if "paddle" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    buf: list = []
    for it in items:
        buf.append(it)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


# ---- pass 1 ---------------------------------------------------------------------
def _documents(cfg: PipelineConfig, stats: PipelineStats, progress: ProgressTracker) -> Iterator[Document]:
    read = stats.stage("read")
    n = 0
    for spec in cfg.inputs:
        if str(spec).startswith(BUILTIN_PREFIX):
            docs = read_builtin(str(spec), stats.issues, progress)
        else:
            docs = read_documents([spec], cfg.reader, stats.issues, progress)
        for doc in docs:
            if cfg.max_docs is not None and n >= cfg.max_docs:
                return
            doc.doc_id = n
            n += 1
            read.count_in(doc)
            read.count_out(doc)
            yield doc


def _input_bytes(inputs: list[str]) -> int:
    return sum(builtin_size_bytes(s) if str(s).startswith(BUILTIN_PREFIX) else input_size_bytes([s]) for s in inputs)


def _progress_bar(cfg: PipelineConfig, total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not cfg.progress, mininterval=1.0)


def _build_quality_filter(cfg: PipelineConfig, out_dir: Path, scores_fh, model=None) -> QualityFilter | None:
    if "quality" not in cfg.stages:
        return None
    ppl = None
    if model is not None or cfg.perplexity_model:
        ppl = PerplexityScorer(model if model is not None else cfg.perplexity_model,
                               max_tokens=cfg.quality.max_tokens, batch_size=cfg.quality.batch_size)
    clf = None
    if cfg.classifier:
        clf = TextClassifier.load(cfg.classifier)
    elif cfg.classifier_good:
        clf = TextClassifier().fit(read_examples(cfg.classifier_good), read_examples(cfg.classifier_bad))
        clf.save(out_dir / "quality_classifier")
    cache = ScoreCache(cfg.scores_from) if cfg.scores_from else None
    return QualityFilter(cfg.quality, ppl, clf, cache, scores_out=scores_fh)


def _pass_filter(cfg, stats, work_file: Path, dedup, qfilter, workers: int, doc_chars: dict) -> None:
    """Pass 1: survivors of clean + quality written to `work_file`; signatures indexed."""
    cleaner = Cleaner(cfg.cleaning) if "clean" in cfg.stages else None
    dedup_cfg = cfg.dedup if dedup is not None else None
    bar = _progress_bar(cfg, _input_bytes(cfg.inputs), "read+clean+filter", "B")
    chunks = _chunks(_documents(cfg, stats, ProgressTracker(bar.update)), CHUNK_DOCS)
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context(start_method()).Pool(workers, _init_worker, (cleaner, dedup_cfg))
        results = _bounded_map(pool, _work_chunk, chunks, 2 * workers)
    else:
        _init_worker(cleaner, dedup_cfg)
        results = map(_work_chunk, chunks)
    clean, quality = stats.stage("clean"), stats.stage("quality")
    t0 = time.perf_counter()
    try:
        with open(work_file, "w", encoding="utf-8") as out:
            for kept, chunk_stats, sigs in results:
                clean.merge(chunk_stats)
                sig_of = dict(zip((d.doc_id for d in kept), sigs)) if sigs is not None else {}
                if qfilter is not None:
                    kept = qfilter.filter(kept, quality)
                for d in kept:
                    doc_chars[d.doc_id] = len(d.text)
                    if dedup is not None:
                        dedup.add(d.doc_id, sig_of[d.doc_id])
                    out.write(d.to_json() + "\n")
                bar.set_postfix(kept=clean.docs_out, refresh=False)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
        stats.summary["pass 1 seconds (read+clean+quality+minhash)"] = round(time.perf_counter() - t0, 1)
    if cleaner is None:
        stats.stages.pop("clean", None)
    if qfilter is None:
        stats.stages.pop("quality", None)


# ---- global dedup decision + pass 2 ------------------------------------------------
def _survivors(work_file: Path, drop: set, clusters_of: set, cluster_docs: dict) -> Iterator[dict]:
    """Stream the work file, recording refs of clustered documents, skipping dropped ones."""
    with open(work_file, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["id"] in clusters_of:
                cluster_docs[rec["id"]] = {"ref": rec["ref"], "preview": rec["text"][:40]}
            if rec["id"] not in drop:
                yield rec


def _write_clusters(path: Path, clusters: list[list[int]], cluster_docs: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for c in clusters:
            rec = {"size": len(c), "kept": cluster_docs.get(c[0]), "removed": [cluster_docs.get(k) for k in c[1:]]}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _text_batches(records: Iterable[dict], max_chars: int) -> Iterator[list[dict]]:
    buf, chars = [], 0
    for rec in records:
        buf.append(rec)
        chars += len(rec["text"])
        if chars >= max_chars:
            yield buf
            buf, chars = [], 0
    if buf:
        yield buf


def _encoder(codec, workers: int):
    """A context manager yielding `encode(texts) -> iterator of id lists` (worker pool when workers > 1)."""
    from ..tokenizer import ParallelEncoder

    if workers <= 1:
        return contextlib.nullcontext(codec.encode_many)  # one SentencePiece call per batch
    pool = ParallelEncoder(codec.vocab_file, num_workers=workers, chunk_size=16, start_method=start_method())

    @contextlib.contextmanager
    def managed():
        with pool:  # terminates the workers if the run is interrupted
            yield pool.imap

    return managed()


def _pass_tokenize(cfg, records: Iterator[dict], tmp: Path, stats: PipelineStats, total_chars: int, workers: int):
    """Pass 2: tokenize survivors into `<tmp>/<name>.bin/.idx`; returns (lengths, codec)."""
    from ..tokenizer import PanGuSentencePiece

    st = stats.start("tokenize")
    codec = PanGuSentencePiece(cfg.vocab_file)
    bar = _progress_bar(cfg, total_chars, "tokenize", "char")
    lengths: list[int] = []
    try:
        with _encoder(codec, workers) as encode, \
                IndexedDatasetBuilder(tmp / cfg.name, dtype_for_vocab(codec.vocab_size)) as builder:
            for batch in _text_batches(records, TOKENIZE_BATCH_CHARS):
                for rec, ids in zip(batch, encode([r["text"] for r in batch])):
                    bar.update(len(rec["text"]))
                    write_document(builder, st, lengths, rec["text"], ids, cfg.separator_id)
        st.extra["tokens"] = builder.num_tokens
    finally:
        bar.close()
        stats.stop("tokenize")
    return lengths, codec


def _split_summary(cfg: PipelineConfig, lengths) -> dict:
    """Documents and tokens of each split; `lengths` a list or an int64 array (the Ray driver's)."""
    import numpy as np

    lengths = np.asarray(lengths, np.int64)
    parts = split_documents(len(lengths), cfg.split, cfg.split_seed) if len(lengths) else [[] for _ in cfg.split]
    names = DEFAULT_SPLIT_NAMES if len(cfg.split) == 3 else [f"split{i}" for i in range(len(cfg.split))]
    return {n: {"documents": len(p), "tokens": int(lengths[np.asarray(p, np.int64)].sum())}
            for n, p in zip(names, parts)}


def _write_reports(out: Path, stats: PipelineStats) -> None:
    (out / "stats.json").write_text(stats.to_json(), encoding="utf-8")
    (out / "stats.txt").write_text(stats.to_table() + "\n", encoding="utf-8")


def _config_snapshot(cfg: PipelineConfig) -> dict:
    snap = dataclasses.asdict(cfg)
    snap.pop("progress", None)
    return snap


class EmptyDatasetError(DataError):
    """No document of the input survived reading and the filters: nothing is written."""


def _drop_reasons(stats: PipelineStats) -> list[tuple[str, int]]:
    """(reason, count) of every input issue and stage drop, biggest first."""
    reasons = Counter(stats.issues.counts)
    for st in stats.stages.values():
        reasons.update({f"{st.name}:{k}": v for k, v in st.dropped.items()})
    return reasons.most_common()


def check_not_empty(cfg, stats: PipelineStats, documents: int) -> None:
    """EmptyDatasetError naming the inputs and the biggest drop reasons when `documents` is 0."""
    if documents:
        return
    reasons = ", ".join(f"{k} {v}" for k, v in _drop_reasons(stats)[:4]) or "the input has no text at all"
    hint = (f"; {stats.issues.counts['undecodable_line']} lines were not {cfg.reader.encoding} (for Chinese legacy "
            "files try --encoding gb18030)" if stats.issues.counts.get("undecodable_line") else "")
    raise EmptyDatasetError(f"prepare-data: no document survived from {', '.join(map(str, cfg.inputs))} "
                            f"(biggest drop reasons: {reasons}){hint}; nothing was written to {cfg.output}")


def warn_undecodable(cfg, stats: PipelineStats) -> None:
    """Warn when more than `cfg.max_undecodable_fraction` of the input lines could not be decoded."""
    bad = stats.issues.counts.get("undecodable_line", 0)
    total = bad + stats.stage("read").docs_in
    if bad and bad / total > cfg.max_undecodable_fraction:
        first = stats.issues.examples.get("undecodable_line", [{}])[0]
        logger.warning("prepare-data: %d of %d lines (%.1f%%) are not valid %s (first: %s line %s); pass "
                       "--encoding (gb18030 for Chinese legacy files) if the input is in another encoding",
                       bad, total, 100 * bad / total, cfg.reader.encoding, first.get("file"), first.get("line"))


def splits_total(lengths) -> int:
    """Sum of a list or an int64 array of document lengths (numpy's sum: no Python int per element)."""
    import numpy as np

    return int(np.asarray(lengths, np.int64).sum())


def _finish_dataset(cfg, tmp: Path, stats: PipelineStats, lengths, codec) -> None:
    check_not_empty(cfg, stats, len(lengths))
    splits = _split_summary(cfg, lengths)
    total = int(splits_total(lengths))
    stats.summary.update(documents=len(lengths), tokens=total, splits=splits)
    _write_reports(tmp, stats)
    write_manifest(tmp, {
        "prefix": cfg.name, "num_documents": len(lengths), "num_tokens": total,
        "dtype": str(dtype_for_vocab(codec.vocab_size).__name__), "vocab_size": codec.vocab_size,
        "vocab_file": str(codec.vocab_file), "vocab_sha256": sha256_file(codec.vocab_file),
        "separator_id": cfg.separator_id, "split": list(cfg.split), "split_names": list(splits),
        "split_seed": cfg.split_seed, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": _config_snapshot(cfg), "stats": stats.to_dict()["stages"], "splits": splits,
        "files": [f"{cfg.name}.bin", f"{cfg.name}.idx"],
    })


def _finish_documents(cfg, tmp: Path, stats: PipelineStats, records: Iterator[dict]) -> None:
    n = 0
    with open(tmp / "documents.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    check_not_empty(cfg, stats, n)
    stats.summary.update(documents=n)
    _write_reports(tmp, stats)
    write_manifest(tmp, {"prefix": None, "num_documents": n, "kind": "documents", "config": _config_snapshot(cfg),
                         "files": ["documents.jsonl"]})


def dead_partials(final: Path) -> list[Path]:
    """`<final>.partial-<pid>` directories of processes that no longer run, sorted (Linux /proc only)."""
    if not Path("/proc/self").exists():
        return []
    out = []
    for p in sorted(final.parent.glob(f"{final.name}.partial-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            out.append(p)
    return out


def _remove_stale_partials(final: Path) -> None:
    """Delete `<final>.partial-<pid>` left by processes that no longer run."""
    for p in dead_partials(final):
        shutil.rmtree(p, ignore_errors=True)


def _dedup_decision(dedup: MinHashDeduplicator, stats: PipelineStats, doc_chars: dict) -> tuple[set, list]:
    """The global pass: clusters from the LSH index; every document but the first of a cluster is dropped."""
    st = stats.start("dedup")
    result = dedup.result()
    _dedup_stats(st, result, dedup.bands_rows, stats, doc_chars)
    stats.stop("dedup")
    return result.drop, result.clusters


def _dedup_stats(st, result, bands_rows: tuple[int, int], stats: PipelineStats, doc_chars: dict) -> None:
    """The dedup stage's counters from its result (both engines)."""
    previous = stats.stages.get("quality") or stats.stages.get("clean") or stats.stage("read")
    st.docs_in, st.chars_in = previous.docs_out, previous.chars_out
    st.docs_out = st.docs_in - len(result.drop)
    st.chars_out = st.chars_in - sum(doc_chars[k] for k in result.drop)
    st.drop("near_duplicate", len(result.drop))
    st.extra.update(result.to_dict(), bands=bands_rows[0], rows=bands_rows[1])
    stats.summary["dedup clusters / documents removed"] = f"{len(result.clusters)} / {len(result.drop)}"


def _kept_chars(stats: PipelineStats) -> int:
    for name in ("dedup", "quality", "clean", "read"):
        if name in stats.stages:
            return stats.stages[name].chars_out
    return 0


# ---- resume after a kill: pass 1 is saved, a rerun of the same command adopts it -----------------------
PASS1_FILE = "pass1.json"
LOCAL_FAULT_ENV = "PANGU_LOCAL_TEST_FAULT"  # tests only: "kill-after-pass1": SIGKILL this process once pass 1
#   is saved (a process killed mid-run, deterministically)
_NOT_OUTPUT = ("num_workers", "overwrite", "progress", "keep_work")  # flags that do not change the output


def resume_key(engine: str, cfg: PipelineConfig, inputs: list[tuple[str, Path | None]]) -> dict:
    """What a dead run's partial directory must have been started with to be adopted (both engines): the
    output-changing config and each input's label (a file, a builtin spec, a Ray shard spec) with its file's
    size and mtime (an input edited since is read again); None for a builtin or a missing file."""
    snap = {k: v for k, v in _config_snapshot(cfg).items() if k not in _NOT_OUTPUT}
    rows = []
    for label, path in inputs:
        st = path.stat() if path is not None and path.exists() else None
        rows.append([label, st.st_size if st else None, st.st_mtime_ns if st else None])
    return json.loads(json.dumps({"engine": engine, "config": snap, "inputs": rows}, default=str))


def _local_resume_key(cfg: PipelineConfig) -> dict:
    """`resume_key` over every input file (directories expanded as the reader expands them)."""
    from .readers import list_input_files

    inputs = []
    for spec in cfg.inputs:
        if str(spec).startswith(BUILTIN_PREFIX):
            inputs.append((str(spec), None))
        else:
            inputs += [(str(f), f) for f in list_input_files(spec)]
    return resume_key("local", cfg, inputs)


def _pass1_files(tmp: Path) -> dict:
    files = {"work_sha256": tmp / "work.jsonl", "sigs_sha256": tmp / "pass1.sigs.npy"}
    if (tmp / "scores.jsonl").exists():
        files["scores_sha256"] = tmp / "scores.jsonl"
    return files


def _save_pass1(cfg, tmp: Path, key: dict, stats: PipelineStats, dedup, doc_chars: dict) -> None:
    """Pass 1's outcome (the work file is already there): signatures as .npy (no pickle), the rest as JSON
    with the files' sha256s, written last under a temporary name and renamed: it marks pass 1 done."""
    import numpy as np

    ids, sigs = dedup.keys_and_signatures() if dedup is not None else ([], np.zeros((0, cfg.dedup.num_perm), np.uint64))
    np.save(tmp / "pass1.sigs.npy", sigs, allow_pickle=False)
    record = {"key": key, "ids": ids,
              "doc_chars": [[int(k), int(v)] for k, v in doc_chars.items()],
              "stages": {k: v.to_dict() for k, v in stats.stages.items()}, "issues": stats.issues.to_dict(),
              "summary": stats.summary, **{f: sha256_file(path) for f, path in _pass1_files(tmp).items()}}
    atomic_write_text(str(tmp / PASS1_FILE), json.dumps(record, ensure_ascii=False))


def _adopt_partial(final: Path, key: dict):
    """(this process's partial directory, the saved pass 1 record) when a dead run of the same command left
    a verified one (renamed to this process's name, with a line saying so); else None."""
    for old in dead_partials(final):
        if not (old / PASS1_FILE).exists():
            continue
        try:
            record = json.loads((old / PASS1_FILE).read_text(encoding="utf-8"))
            if record.get("key") != key:
                continue
            for field, path in _pass1_files(old).items():
                if sha256_file(path) != record[field]:
                    raise ValueError(f"{path.name} does not match its sha256 in {PASS1_FILE}")
            if "scores_sha256" in record and "scores_sha256" not in _pass1_files(old):
                raise ValueError("scores.jsonl is missing")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("prepare-data: the interrupted run in %s is corrupt or partial (%s); starting again",
                           old, " ".join(str(exc).split())[:200])
            continue
        mine = final.parent / f"{final.name}.partial-{os.getpid()}"
        shutil.rmtree(mine, ignore_errors=True)
        os.replace(old, mine)
        logger.warning("prepare-data: resuming the interrupted run in %s: pass 1 (read, clean, filter, MinHash) "
                       "is kept, dedup and tokenize are done again", old)
        return mine, record
    return None


def _restore_pass1(cfg, tmp: Path, record: dict, stats: PipelineStats):
    """(dedup index, {doc id: chars}) and the stats of the saved pass 1."""
    import numpy as np

    stats.stages = {k: StageStats.from_dict(k, v) for k, v in record["stages"].items()}
    stats.issues = IssueLog.from_dict(record["issues"])
    stats.summary.update(record["summary"])
    dedup = None
    if "dedup" in cfg.stages:
        dedup = MinHashDeduplicator(cfg.dedup)
        sigs = np.load(tmp / "pass1.sigs.npy", allow_pickle=False)  # [docs, num_perm]
        for doc_id, row in zip(record["ids"], sigs):
            dedup.add(doc_id, row)
    return dedup, {k: v for k, v in record["doc_chars"]}


def _run_stages(cfg: PipelineConfig, tmp: Path, stats: PipelineStats, workers: int, model,
                key: dict | None = None, resumed: dict | None = None) -> None:
    if resumed is not None:
        dedup, doc_chars = _restore_pass1(cfg, tmp, resumed, stats)
    else:
        scores_fh = open(tmp / "scores.jsonl", "w", encoding="utf-8") if "quality" in cfg.stages else None
        dedup = MinHashDeduplicator(cfg.dedup) if "dedup" in cfg.stages else None
        doc_chars: dict = {}
        try:
            qfilter = _build_quality_filter(cfg, tmp, scores_fh, model)
            _pass_filter(cfg, stats, tmp / "work.jsonl", dedup, qfilter, workers, doc_chars)
        finally:
            if scores_fh is not None:
                scores_fh.close()
        if key is not None:
            _save_pass1(cfg, tmp, key, stats, dedup, doc_chars)
            if os.environ.get(LOCAL_FAULT_ENV) == "kill-after-pass1":
                os.kill(os.getpid(), signal.SIGKILL)  # the test hook: a process killed mid-run
    warn_undecodable(cfg, stats)
    drop, clusters = _dedup_decision(dedup, stats, doc_chars) if dedup is not None else (set(), [])
    clusters_of = {k for c in clusters for k in c}
    cluster_docs: dict = {}
    records = _survivors(tmp / "work.jsonl", drop, clusters_of, cluster_docs)
    if "tokenize" in cfg.stages:
        lengths, codec = _pass_tokenize(cfg, records, tmp, stats, _kept_chars(stats), workers)
        _write_clusters(tmp / "dedup_clusters.jsonl", clusters, cluster_docs)
        _finish_dataset(cfg, tmp, stats, lengths, codec)
    else:
        _finish_documents(cfg, tmp, stats, records)
        _write_clusters(tmp / "dedup_clusters.jsonl", clusters, cluster_docs)
    for name in (PASS1_FILE, "pass1.sigs.npy"):
        (tmp / name).unlink(missing_ok=True)
    if not cfg.keep_work:
        (tmp / "work.jsonl").unlink()


def run_pipeline(cfg: PipelineConfig, model=None) -> PipelineStats:
    """Run the configured stages into `cfg.output`; returns the stats (also written there).

    `model` optionally hands an in-memory causal LM to the perplexity filter.
    """
    from ..tokenizer.batch import default_num_workers

    cfg.validate(has_model=model is not None)
    final = Path(cfg.output)
    if final.exists() and not cfg.overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    # a run killed after pass 1 is resumed from it when the same command is run again (not with an in-memory
    # model: nothing says it is the same model)
    key = _local_resume_key(cfg) if model is None else None
    adopted = _adopt_partial(final, key) if key is not None else None
    _remove_stale_partials(final)
    workers = cfg.num_workers or default_num_workers()
    tmp, resumed = adopted if adopted is not None else (partial_dir(final), None)
    stats = PipelineStats()
    for name in ("read",) + tuple(s for s in STAGES if s in cfg.stages):
        stats.stage(name)  # report rows in pipeline order
    try:
        _run_stages(cfg, tmp, stats, workers, model, key, resumed)
        commit_dir(tmp, final, cfg.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def write_document(builder, st, lengths: list, text: str, ids, separator_id: int) -> None:
    """Count one tokenized document and append it with its separator (or drop it when it has no tokens).
    The one definition the local and Ray engines share."""
    st.docs_in += 1
    st.chars_in += len(text)
    if not ids:
        st.drop("empty_after_tokenize")
        return
    builder.add_document(list(ids) + [separator_id])  # REF "Packing": 9 after each document
    lengths.append(len(ids) + 1)
    st.docs_out += 1
    st.chars_out += len(text)
