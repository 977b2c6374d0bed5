"""Locate the PanGu-alpha SentencePiece files (`vocab.model` + `vocab.vocab`).

Search order when no explicit path is given (REF "Tokenizer"):

1. the ``PANGU_VOCAB_FILE`` environment variable (a file or a directory);
2. the `pcl-pangu` package: ``pcl_pangu/tokenizer/bpe_4w_pcl/vocab.model``,
   found through ``importlib.util.find_spec`` (which locates a top-level
   package without running its ``__init__``; pcl_pangu's ``__init__`` imports
   heavy modules) and, as a fallback, through the file list that
   ``importlib.metadata`` records for the ``pcl-pangu`` distribution.

Nothing here imports paddle, paddlenlp or pcl_pangu, so worker processes stay light.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from paddle_pangu.errors import PanGuError

VOCAB_MODEL_NAME = "vocab.model"
VOCAB_TEXT_NAME = "vocab.vocab"
ENV_VAR = "PANGU_VOCAB_FILE"
PCL_DISTRIBUTION = "pcl-pangu"
PCL_PACKAGE = "pcl_pangu"
# REF "Tokenizer": the 40k BPE model lives under pcl_pangu/tokenizer/bpe_4w_pcl/.
PCL_VOCAB_SUBPATH = ("tokenizer", "bpe_4w_pcl", VOCAB_MODEL_NAME)

HOW_TO_FIX = (
    "Install the tokenizer files with `pip install pcl-pangu==1.2.6.2`, or pass an explicit "
    f"path (vocab_file=... / --vocab PATH, a `{VOCAB_MODEL_NAME}` file or a directory holding one), "
    f"or set {ENV_VAR}=/path/to/{VOCAB_MODEL_NAME}."
)


class VocabNotFoundError(PanGuError, FileNotFoundError):
    """No PanGu `vocab.model` was found; the message lists every path tried and how to fix it."""

    def __init__(self, tried: list[str], reason: str = "no PanGu tokenizer vocabulary found"):
        self.tried = list(tried)
        lines = [f"{reason}. Paths tried:"]
        lines += [f"  - {p}" for p in self.tried] or ["  - (none: no candidate location exists)"]
        lines.append(HOW_TO_FIX)
        super().__init__("\n".join(lines))


def _as_model_path(path: str | os.PathLike) -> Path:
    """A directory means `<dir>/vocab.model`; anything else is taken as the model file itself."""
    p = Path(path).expanduser()
    return p / VOCAB_MODEL_NAME if p.is_dir() else p


def _pcl_spec_candidates() -> list[Path]:
    """`vocab.model` paths under the pcl_pangu package directory, located without importing it."""
    try:
        spec = importlib.util.find_spec(PCL_PACKAGE)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    return [Path(root).joinpath(*PCL_VOCAB_SUBPATH) for root in roots]


def _pcl_metadata_candidates() -> list[Path]:
    """`vocab.model` paths recorded in the installed `pcl-pangu` distribution's file list."""
    try:
        dist = importlib.metadata.distribution(PCL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return []
    suffix = "/".join(PCL_VOCAB_SUBPATH)
    return [Path(str(dist.locate_file(f))) for f in (dist.files or []) if str(f).replace("\\", "/").endswith(suffix)]


def default_vocab_candidates() -> list[Path]:
    """Every location searched when no path is given, in search order, without duplicates."""
    candidates: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        candidates.append(_as_model_path(env))
    candidates += _pcl_spec_candidates() + _pcl_metadata_candidates()
    unique: list[Path] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def find_vocab_file(vocab_file: str | os.PathLike | None = None) -> Path:
    """Return the path of the SentencePiece model to load.

    Args:
        vocab_file: an explicit `vocab.model` file, or a directory holding one (for example a
            saved model / tokenizer directory). When None, search `default_vocab_candidates()`.

    Raises:
        VocabNotFoundError: naming every path tried and how to fix it.
    """
    if vocab_file is not None:
        path = _as_model_path(vocab_file)
        if path.is_file():
            return path
        raise VocabNotFoundError([str(path)], reason=f"PanGu tokenizer vocabulary {str(vocab_file)!r} does not exist")
    tried = default_vocab_candidates()
    for path in tried:
        if path.is_file():
            return path
    if not tried:
        tried_text = [f"<package {PCL_PACKAGE!r} / distribution {PCL_DISTRIBUTION!r} is not installed>"]
    else:
        tried_text = [str(p) for p in tried]
    raise VocabNotFoundError(tried_text)


def companion_vocab_text(model_path: str | os.PathLike) -> Path | None:
    """The human-readable `vocab.vocab` next to a `vocab.model`, if present."""
    path = Path(model_path).with_name(VOCAB_TEXT_NAME)
    return path if path.is_file() else None
