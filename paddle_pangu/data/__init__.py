"""Data pipeline: raw Chinese text -> cleaned, filtered, deduplicated, tokenized .bin/.idx.

Stages (each importable on its own; chained by `pangu prepare-data`, see
docs/DATA.md):
    readers / builtin  - stream documents from text, JSONL, gzip, builtin:*
    cleaning           - the paper's rules (REF "Data pipeline")
    quality            - perplexity and classifier filters
    dedup              - MinHash + LSH fuzzy dedup
    indexed_dataset    - memory-mapped .bin/.idx
    packing            - splits, seq_len+1 samples, weighted mixtures
    pipeline           - chaining, stats, manifest

Names are imported lazily so worker processes stay light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_pretraining_datasets": "packing",
    "split_documents": "packing",
    "GPTSampleDataset": "packing",
    "BlendedDataset": "packing",
    "open_prepared": "packing",
    "IndexedDataset": "indexed_dataset",
    "IndexedDatasetBuilder": "indexed_dataset",
    "PipelineConfig": "pipeline",
    "run_pipeline": "pipeline",
    "CleaningConfig": "cleaning",
    "Cleaner": "cleaning",
    "DedupConfig": "dedup",
    "MinHashDeduplicator": "dedup",
    "find_near_duplicates": "dedup",
    "PerplexityScorer": "quality",
    "TextClassifier": "quality",
    "ReaderConfig": "readers",
    "read_documents": "readers",
    "read_builtin": "builtin",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
