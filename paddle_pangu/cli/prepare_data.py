"""`pangu prepare-data`: flags -> PipelineConfig -> run_pipeline.

Settings come from an optional YAML file (`--config`, same nesting as
PipelineConfig: top-level fields plus `reader:`, `cleaning:`, `quality:`,
`dedup:` sections), read by the typed loader `pangu train` uses
(`config/loader.py`), and are overridden by the flags given on the command line.

Example (the README's default data):
    pangu prepare-data --input builtin:peoples-daily --output data/peoples_daily
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config import loader
from ..errors import ConfigError, UsageError
from ..data.cleaning import CleaningConfig, load_word_list
from ..data.dedup import DedupConfig
from ..data.pipeline import STAGES, PipelineConfig, run_pipeline
from ..data.quality import QualityConfig
from ..data.readers import DOC_MODES, FORMATS, ReaderConfig

logger = logging.getLogger(__name__)

# flag dest -> (section, field); section None = top level of PipelineConfig
_FLAG_FIELDS = {
    "name": (None, "name"), "perplexity_model": (None, "perplexity_model"), "classifier": (None, "classifier"),
    "classifier_good": (None, "classifier_good"), "classifier_bad": (None, "classifier_bad"),
    "scores_from": (None, "scores_from"), "vocab_file": (None, "vocab_file"), "separator_id": (None, "separator_id"),
    "split_seed": (None, "split_seed"), "workers": (None, "num_workers"), "max_docs": (None, "max_docs"),
    "shard_mb": (None, "shard_mb"),
    "format": ("reader", "format"), "doc_mode": ("reader", "doc_mode"), "text_field": ("reader", "text_field"),
    "encoding": ("reader", "encoding"),
    "min_chinese_ratio": ("cleaning", "min_chinese_ratio"), "min_chars": ("cleaning", "min_chars"),
    "sensitive_threshold": ("cleaning", "sensitive_threshold"),
    "max_perplexity": ("quality", "max_perplexity"), "min_quality": ("quality", "min_quality"),
    "dedup_threshold": ("dedup", "threshold"), "num_perm": ("dedup", "num_perm"),
    "shingle_size": ("dedup", "shingle_size"), "bands": ("dedup", "bands"), "rows": ("dedup", "rows"),
}
_WORD_LISTS = {"sensitive_words": "sensitive_words", "ad_keywords": "ad_keywords", "nav_keywords": "nav_keywords"}
_SECTIONS = {"reader": ReaderConfig, "cleaning": CleaningConfig, "quality": QualityConfig, "dedup": DedupConfig}


class DataConfigError(ConfigError):
    """A prepare-data YAML field or flag is unknown or mistyped (the message names the file and field)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input / output")
    io.add_argument("--input", action="append", required=True, metavar="PATH",
                    help="file, directory, or builtin:peoples-daily / builtin:reviews (repeatable)")
    io.add_argument("--output", required=True, help="dataset directory to create")
    io.add_argument("--name", help="file stem of <name>.bin/.idx (default: corpus)")
    io.add_argument("--config", help="YAML with PipelineConfig fields (flags override it)")
    io.add_argument("--format", choices=FORMATS, help="input format (default: auto by suffix)")
    io.add_argument("--doc-mode", choices=DOC_MODES, help="plain-text document boundary (default: line)")
    io.add_argument("--text-field", help="JSONL text field, dotted path allowed (default: text)")
    io.add_argument("--encoding", help="input text encoding (default: utf-8; gb18030 for GBK/GB2312 Chinese "
                                       "legacy files); undecodable lines are counted and skipped")
    io.add_argument("--stages", help=f"comma list from {','.join(STAGES)} (default: clean,dedup,tokenize; "
                                     "quality is added when a scorer is given)")
    io.add_argument("--max-docs", type=int, help="stop after this many input documents")
    io.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    io.add_argument("--keep-work", action="store_true", help="keep the intermediate work.jsonl")
    io.add_argument("--no-progress", action="store_true", help="no progress bars")
    io.add_argument("--workers", type=int, help="worker processes (default: usable CPUs)")
    io.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: this machine's process pool; ray: the same stages as Ray tasks (pip install "
                         "'paddle-pangu[ray]'); rerun after a killed ray run and it resumes")
    io.add_argument("--ray-address", help="join this running Ray cluster (default: start a local one with "
                                          "--workers CPUs)")
    io.add_argument("--shard-mb", type=float, help="--engine ray: cut an uncompressed input file larger than this "
                                                   "into shards of about this size at line ends (default: the input's size / 16, within 1-64 MB)")
    cl = parser.add_argument_group("cleaning (paper rules)")
    cl.add_argument("--min-chinese-ratio", type=float, help="drop below this Chinese-character ratio (0.6)")
    cl.add_argument("--min-chars", type=int, help="drop documents shorter than this (150)")
    cl.add_argument("--no-t2s", action="store_true", help="keep traditional characters")
    cl.add_argument("--sensitive-words", help="word list file (one per line)")
    cl.add_argument("--sensitive-threshold", type=int, help="drop with more hits than this (3)")
    cl.add_argument("--ad-keywords", help="advertisement keyword file")
    cl.add_argument("--nav-keywords", help="navigation keyword file")
    q = parser.add_argument_group("model-based quality filter (off unless a scorer is given)")
    q.add_argument("--perplexity-model", help="PanGu model directory scoring perplexity")
    q.add_argument("--max-perplexity", type=float, help="drop above this perplexity (default: score only)")
    q.add_argument("--classifier", help="saved classifier path (from an earlier run's quality_classifier)")
    q.add_argument("--classifier-good", help="good examples (txt lines / jsonl) to train a classifier")
    q.add_argument("--classifier-bad", help="bad examples to train a classifier")
    q.add_argument("--min-quality", type=float, help="drop below this P(good) (default: score only)")
    q.add_argument("--scores-from", help="reuse an earlier scores.jsonl instead of rescoring")
    d = parser.add_argument_group("fuzzy dedup (MinHash + LSH)")
    d.add_argument("--no-dedup", action="store_true", help="skip deduplication")
    d.add_argument("--dedup-threshold", type=float, help="Jaccard threshold (0.5)")
    d.add_argument("--num-perm", type=int, help="MinHash permutations (128)")
    d.add_argument("--shingle-size", type=int, help="characters per shingle (5)")
    d.add_argument("--bands", type=int, help="LSH bands (with --rows; default: optimal for the threshold)")
    d.add_argument("--rows", type=int, help="LSH rows per band")
    t = parser.add_argument_group("tokenize + split")
    t.add_argument("--vocab-file", help="SentencePiece vocab.model (default: pcl-pangu's bpe_4w_pcl)")
    t.add_argument("--separator-id", type=int, help="token appended after each document (9)")
    t.add_argument("--split", help="document split ratios train,valid,test (949,50,1)")
    t.add_argument("--split-seed", type=int, help="seed of the document split (1234)")


def _stages(args, data: dict) -> tuple[str, ...]:
    if args.stages:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    else:
        stages = list(data.pop("stages", ["clean", "dedup", "tokenize"]))
    scorer = args.perplexity_model or args.classifier or args.classifier_good or args.scores_from
    if scorer and "quality" not in stages:
        stages.append("quality")
    if args.no_dedup and "dedup" in stages:
        stages.remove("dedup")
    return tuple(s for s in STAGES if s in stages) + tuple(s for s in stages if s not in STAGES)


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Merge YAML (if any) and explicit flags into a PipelineConfig, through the typed loader of `pangu train`."""
    data = loader.read_yaml(args.config, "--config file", DataConfigError) if args.config else {}
    where = args.config or "flags"
    for field in ("inputs", "output", "overwrite", "keep_work", "progress"):
        if field in data:
            raise DataConfigError(f"{where}: {field!r} belongs on the command line, not in the config file")
    sections = {name: dict(data.pop(name, None) or {}) for name in _SECTIONS}
    stages = _stages(args, data)
    for dest, (section, field) in _FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            (sections[section] if section else data)[field] = value
    if args.no_t2s:
        sections["cleaning"]["t2s"] = False
    for dest, field in _WORD_LISTS.items():
        if getattr(args, dest):
            sections["cleaning"][field] = load_word_list(getattr(args, dest))
    if args.split:
        try:
            data["split"] = tuple(float(x) for x in args.split.split(","))
        except ValueError as exc:
            raise DataConfigError(f"--split {args.split!r}: expected comma-separated numbers like 949,50,1") from exc
    fields = {**data, **sections, "inputs": list(args.input), "output": args.output, "stages": stages,
              "overwrite": args.overwrite, "keep_work": args.keep_work, "progress": not args.no_progress}
    try:
        return loader.build(PipelineConfig, fields, "", DataConfigError)
    except DataConfigError as exc:
        raise DataConfigError(f"{where}: {exc}") from exc


def load_config_file(path: str | Path, inputs=("builtin:peoples-daily",), output: str = "prepared") -> PipelineConfig:
    """A validated PipelineConfig from a YAML file alone (e.g. to check configs/data/*.yaml)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--config", str(path), "--output", output] + [x for i in inputs for x in ("--input", i)]
    cfg = build_config(parser.parse_args(argv))
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = build_config(args)
        if getattr(args, "engine", "local") == "ray":
            from ..data.ray_engine import run_pipeline_ray

            stats = run_pipeline_ray(cfg, address=args.ray_address)
        elif getattr(args, "ray_address", None):
            raise UsageError("prepare-data --ray-address needs --engine ray")
        else:
            stats = run_pipeline(cfg)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"pangu prepare-data: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(stats.to_table())
    print(f"\nwrote {cfg.output} (stats.json, stats.txt, manifest.json)")
    return 0
