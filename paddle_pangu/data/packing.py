"""Stage 5 (read side): document splits, seq_len+1 samples, and weighted mixtures.

* `split_documents` - deterministic train/valid/test split by documents
  (seeded permutation, ratios such as 949/50/1); independent of the training
  seed, so the validation set never changes between runs.
* `GPTSampleDataset` - concatenates a split's documents (each already ending
  with the separator, REF "Packing") in a seeded shuffled order, one fresh
  permutation per epoch, and cuts windows of seq_len + 1 tokens with stride
  seq_len (Megatron: the last token of a sample is the first of the next).
  Samples cross document boundaries; with `eod_reset` the model resets
  positions at the separator. Sample order is shuffled too.
* `BlendedDataset` - Megatron's deterministic blending: sample i comes from
  the dataset whose share is furthest below its weight (REF "Source mixture").
* `build_pretraining_datasets` - the contract used by training.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .indexed_dataset import IndexedDataset
from .contract import check_manifest, manifest_split_seed
from .manifest import read_manifest

DEFAULT_SPLIT = (949, 50, 1)
DEFAULT_SPLIT_NAMES = ("train", "valid", "test")


def split_documents(num_docs: int, ratios: Sequence[float] = DEFAULT_SPLIT, seed: int = 1234) -> list[np.ndarray]:
    """Document indices of each split (sorted), from a seeded permutation.

    Every split with a positive ratio gets at least one document when there
    are enough documents.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or len(r) == 0 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"split ratios {list(ratios)}: expected non-negative numbers with a positive sum, e.g. 949,50,1")
    counts = np.floor(r / r.sum() * num_docs).astype(np.int64)
    positive = np.flatnonzero(r > 0)
    if num_docs >= len(positive):
        for i in positive:  # no empty split that was asked for
            if counts[i] == 0:
                counts[i] = 1
                counts[int(np.argmax(counts))] -= 1
    counts[int(np.argmax(r))] += num_docs - counts.sum()  # rounding remainder to the largest split
    perm = np.random.RandomState(seed).permutation(num_docs)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [np.sort(perm[bounds[i]:bounds[i + 1]]) for i in range(len(r))]


class GPTSampleDataset:
    """`ds[i]` -> int64 array of seq_len + 1 tokens; deterministic for a seed.

    Args:
        indexed: the token store.
        doc_indices: documents of this split.
        seq_len: model sequence length (samples hold seq_len + 1 tokens).
        num_samples: how many samples; as many epochs as needed are drawn.
        seed: shuffling seed (document order per epoch and sample order).
    """

    def __init__(self, indexed: IndexedDataset, doc_indices: np.ndarray, seq_len: int, num_samples: int, seed: int, name: str = ""):
        if seq_len < 1 or num_samples < 1:
            raise ValueError(f"{name}: seq_len={seq_len} and num_samples={num_samples} must be >= 1")
        self.indexed, self.seq_len, self.num_samples, self.name = indexed, int(seq_len), int(num_samples), name
        doc_indices = np.asarray(doc_indices, dtype=np.int64)
        lengths = np.asarray(indexed.lengths, dtype=np.int64)
        tokens_per_epoch = int(lengths[doc_indices].sum()) if len(doc_indices) else 0
        if tokens_per_epoch == 0:
            raise DataError(f"dataset {name or indexed.prefix}: the split has no tokens; cannot draw {num_samples} "
                            "samples (give that split a share of the documents with data.splits, or more data)")
        needed = num_samples * self.seq_len + 1
        self.num_epochs = math.ceil(needed / tokens_per_epoch)
        rng = np.random.RandomState(seed)
        self.doc_order = np.concatenate([rng.permutation(doc_indices) for _ in range(self.num_epochs)])  # [E*D]
        self.doc_start = np.concatenate([[0], np.cumsum(lengths[self.doc_order])])  # [E*D+1] stream positions
        self.sample_order = np.random.RandomState(seed + 1).permutation(num_samples)  # [num_samples]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples} samples")
        start = int(self.sample_order[i]) * self.seq_len
        end = start + self.seq_len + 1
        k = int(np.searchsorted(self.doc_start, start, side="right")) - 1
        pieces = []
        while start < end:
            doc_off = start - int(self.doc_start[k])
            take = min(end - start, int(self.doc_start[k + 1] - self.doc_start[k]) - doc_off)
            pieces.append(self.indexed.get(int(self.doc_order[k]), doc_off, take))
            start += take
            k += 1
        return np.concatenate(pieces).astype(np.int64)  # [seq_len + 1]


class BlendedDataset:
    """Deterministic weighted mixture of datasets (Megatron's blending rule)."""

    def __init__(self, datasets: Sequence, weights: Sequence[float], num_samples: int):
        w = np.asarray(weights, dtype=np.float64)
        if len(datasets) != len(w) or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"BlendedDataset: {len(datasets)} datasets need as many non-negative weights, got {list(weights)}")
        w = w / w.sum()
        self.datasets, self.weights, self.num_samples = list(datasets), w, int(num_samples)
        self.dataset_index = np.zeros(num_samples, dtype=np.int64)  # [num_samples] which dataset
        self.dataset_sample = np.zeros(num_samples, dtype=np.int64)  # [num_samples] which sample in it
        taken = np.zeros(len(w), dtype=np.int64)
        for i in range(num_samples):
            d = int(np.argmax(w * max(i, 1) - taken))  # the source furthest below its share
            self.dataset_index[i], self.dataset_sample[i] = d, taken[d]
            taken[d] += 1
        for d, n in enumerate(taken):
            if n > len(self.datasets[d]):
                raise ValueError(f"BlendedDataset: dataset {d} has {len(self.datasets[d])} samples, blending needs {n}")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample[i])]


def open_prepared(path: str | os.PathLike, verify_checksums: bool = False) -> tuple[IndexedDataset, dict]:
    """A prepared dataset directory (manifest checked) or a bare `.bin/.idx` prefix."""
    p = Path(path)
    if p.is_dir():
        manifest = read_manifest(p, verify_checksums)
        if not manifest.get("prefix"):
            raise DataError(f"{p}: holds {manifest.get('kind', 'no token data')} (prepared without the tokenize "
                            "stage), not a .bin/.idx dataset")
        return IndexedDataset(p / manifest["prefix"]), manifest
    return IndexedDataset(p), {}


def build_pretraining_datasets(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    weights: Sequence[float] | None,
    seq_len: int,
    num_samples: dict[str, int],
    seed: int = 1234,
    splits: Sequence[str] = DEFAULT_SPLIT_NAMES,
    split_ratios: Sequence[float] | None = None,
    split_seed: int | None = None,
    contract=None,
) -> dict:
    """Training/validation datasets over one or several prepared datasets.

    Args:
        paths: prepared dataset directories (or .bin/.idx prefixes).
        weights: sampling weight per path (REF "Source mixture"); None = equal.
        seq_len: model sequence length; items have seq_len + 1 tokens.
        num_samples: split name -> number of samples (splits absent or 0 are skipped).
        seed: shuffling seed of the samples.
        splits: split names, aligned with `split_ratios`.
        split_ratios: document split ratios; default: the first dataset's
            manifest `split`, else 949/50/1.
        split_seed: seed of the document split (kept apart from `seed`);
            default: each dataset's manifest `split_seed` (1234 for older ones).
        contract: a `contract.RunDataContract`; every manifest must match it
            (separator id, tokenizer hash, vocab size) or DataError is raised.

    Returns: dict split -> dataset whose items are int64 numpy arrays of
    length seq_len + 1 (tokens = s[:-1], labels = s[1:]).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("build_pretraining_datasets: no dataset paths given")
    weights = [1.0] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths):
        raise ValueError(f"build_pretraining_datasets: {len(paths)} paths but {len(weights)} weights")
    opened = [open_prepared(p) for p in paths]
    if contract is not None:
        for p, (_, manifest) in zip(paths, opened):
            check_manifest(manifest, p, contract)
    ratios = split_ratios or opened[0][1].get("split") or DEFAULT_SPLIT
    if len(ratios) != len(splits):
        raise ValueError(f"build_pretraining_datasets: {len(splits)} split names {list(splits)} but ratios {list(ratios)}")
    doc_splits = [split_documents(len(ds), ratios, manifest_split_seed(m) if split_seed is None else split_seed)
                  for ds, m in opened]
    out = {}
    for s, split in enumerate(splits):
        n = int(num_samples.get(split, 0))
        if n <= 0:
            continue
        total_w = float(sum(weights))
        parts = []
        for k, ((ds, _), docs) in enumerate(zip(opened, doc_splits)):
            n_k = n if len(paths) == 1 else math.ceil(n * weights[k] / total_w * 1.005) + 1
            parts.append(GPTSampleDataset(ds, docs[s], seq_len, n_k, seed + 7919 * k, name=f"{paths[k]}:{split}"))
        out[split] = parts[0] if len(parts) == 1 else BlendedDataset(parts, weights, n)
    return out
