"""The dataset manifest as a contract between `pangu prepare-data` and training.

A prepared dataset records how its token ids were made (`manifest.json`):
the tokenizer's `vocab_sha256`, its `vocab_size`, the document `separator_id`
and the document-split `split_seed`. Training trusts the ids only if they
match the run:

* `separator_id` == the model's `eod_token_id` (else the model never sees a
  document boundary where the data has one, and `eod_reset` resets at random
  tokens);
* `vocab_sha256` == sha256 of the run's tokenizer `vocab.model` (the same
  ids mean the same pieces);
* `vocab_size` <= the model's `vocab_size` (every id has an embedding row).

Every refusal is a `DataError` naming the manifest, the field, both values and
the fix. Manifests written before `vocab_sha256` existed are still read: the
tokenizer check is skipped with a warning that says so and how to add it.
The document split uses each manifest's own `split_seed` (older manifests
without it: the historical constant 1234).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .manifest import MANIFEST, sha256_file

LEGACY_SPLIT_SEED = 1234  # what every dataset was split with before the manifest's seed was used
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDataContract:
    """What a training run expects of its prepared data.

    Args:
        eod_token_id: the model's end-of-document id.
        model_vocab_size: rows of the model's embedding.
        vocab_sha256: sha256 of the run tokenizer's `vocab.model`; None skips the check.
        vocab_file: that file's path (named in messages only).
    """

    eod_token_id: int
    model_vocab_size: int
    vocab_sha256: str | None = None
    vocab_file: str = "<tokenizer>"

    @classmethod
    def for_run(cls, model_config, tokenizer: str | os.PathLike | None) -> "RunDataContract":
        """The contract of a model config and a tokenizer dir (None: the installed PanGu vocabulary)."""
        from ..tokenizer.vocab import find_vocab_file

        vocab = find_vocab_file(tokenizer)
        return cls(int(model_config.eod_token_id), int(model_config.vocab_size), sha256_file(vocab), str(vocab))


def manifest_split_seed(manifest: dict) -> int:
    """The seed the dataset's document split is drawn with."""
    seed = manifest.get("split_seed", LEGACY_SPLIT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{MANIFEST}: split_seed={seed!r}, expected an integer (rerun `pangu prepare-data`)")
    return seed


def check_manifest(manifest: dict, where: str | os.PathLike, contract: RunDataContract) -> None:
    """Raise DataError if the dataset at `where` was not made for the run `contract` describes."""
    path = Path(where) / MANIFEST
    if not manifest:  # a bare .bin/.idx prefix: nothing recorded to check against
        log.warning("%s: a bare .bin/.idx prefix has no %s; separator, tokenizer and vocab size are unchecked - "
                    "use a `pangu prepare-data` directory", where, MANIFEST)
        return
    _check_separator(manifest, path, contract)
    _check_vocab_size(manifest, path, contract)
    _check_vocab_hash(manifest, path, contract)


def _check_separator(manifest: dict, path: Path, contract: RunDataContract) -> None:
    sep = manifest.get("separator_id")
    if sep is None:
        raise DataError(f"{path}: no separator_id field; expected the model's eod_token_id={contract.eod_token_id} "
                        "(rerun `pangu prepare-data` to write a complete manifest)")
    if int(sep) != contract.eod_token_id:
        raise DataError(f"{path}: separator_id={sep} but the model's eod_token_id={contract.eod_token_id}; "
                        f"rerun `pangu prepare-data` with separator_id: {contract.eod_token_id}, or set the "
                        f"model's eod_token_id: {sep}")


def _check_vocab_size(manifest: dict, path: Path, contract: RunDataContract) -> None:
    size = manifest.get("vocab_size")
    if size is None:
        raise DataError(f"{path}: no vocab_size field; expected at most the model's vocab_size="
                        f"{contract.model_vocab_size} (rerun `pangu prepare-data`)")
    if int(size) > contract.model_vocab_size:
        raise DataError(f"{path}: vocab_size={size} (the tokenizer that wrote the data) exceeds the model's "
                        f"vocab_size={contract.model_vocab_size}, so some ids have no embedding row; set the "
                        f"model's vocab_size >= {size}, or re-tokenize with the run's tokenizer")


def _check_vocab_hash(manifest: dict, path: Path, contract: RunDataContract) -> None:
    if contract.vocab_sha256 is None:
        return
    written = manifest.get("vocab_sha256")
    if written is None:
        log.warning("%s: written before manifests recorded vocab_sha256; cannot check that the data was tokenized "
                    "with %s - rerun `pangu prepare-data` to record it", path, contract.vocab_file)
        return
    if written != contract.vocab_sha256:
        raise DataError(f"{path}: vocab_sha256={written} (tokenizer {manifest.get('vocab_file', '?')}) but the "
                        f"run's tokenizer {contract.vocab_file} has vocab_sha256={contract.vocab_sha256}; set "
                        "data.tokenizer to the tokenizer that wrote the data, or rerun `pangu prepare-data` with "
                        "the run's tokenizer")
