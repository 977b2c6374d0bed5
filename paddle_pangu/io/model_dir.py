"""Verified model directories: what `pangu` writes can be checked before it is loaded.

Every directory the project writes for use (`final_model/`, fine-tune outputs,
`merge-lora`, `export`, `convert`, `reshard`) is sealed with a `MANIFEST.json`
(format `paddle_pangu.model/1`: size + xxh3-128 hash of every weight file, and
the tensor names and shapes each holds; the machinery of checkpoints,
`io/durable.py`). Loading verifies it: a flipped byte, a truncation, a missing
listed file, or a weight file the manifest does not list is refused with one
line naming the file. config.json and tokenizer files are not hashed (users
edit them); config.json is validated and checked against the tensors on every
load (`model/verify.py`). Directories without a manifest (older versions,
hand-made, other tools) still load after the same tensor check.

Safetensors headers are read here, bounded and validated before anything
trusts them (`read_safetensors_header`): a header length beyond the file or
100 MB, a header that is not a JSON object, an entry without dtype / shape /
offsets or with offsets outside the data is a one-line `WeightFileError`.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ..errors import CheckpointError, PanGuError
from .durable import MANIFEST, fsync_dir, verify_rank_dir, write_manifest

MODEL_FORMAT = "paddle_pangu.model/1"
WEIGHT_EXTENSIONS = (".safetensors", ".pdparams", ".pdiparams")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit (100 MB)
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class BadWeightsError(PanGuError, ValueError):
    """A weight file whose header or contents cannot be what it claims (names the file and the problem)."""


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_EXTENSIONS)


def _hashed(name: str) -> bool:
    """What a model manifest covers: the weights and the files that say which weights there are
    (config.json and tokenizer files are validated on load, not hashed: users edit them)."""
    return is_weight_file(name) or name.endswith(".safetensors.index.json") or name == "checkpoint_layout.json"


def _tensor_shapes(path: str, name: str) -> dict | None:
    """{tensor: shape} of one weight file, recorded in the manifest so loaders can check it against
    config.json without reading a pickle twice (None for graph parameter files)."""
    full = os.path.join(path, name)
    if name.endswith(".safetensors"):
        return {k: list(v[1]) for k, v in read_safetensors_header(full).items()}
    if name.endswith(".pdparams"):
        from .safe_load import load_pdparams

        state = load_pdparams(full)
        return {k: list(np.shape(v)) for k, v in state.items() if hasattr(v, "shape")}
    return None


def seal_model_dir(path: str, algo: str = "xxh3_128") -> dict:
    """Write `path/MANIFEST.json` (call after the last weight file is written): size + hash of every
    weight file, and the tensor names and shapes each holds."""
    tensors = {n: s for n in sorted(os.listdir(path)) if _hashed(n) and os.path.isfile(os.path.join(path, n))
               and (s := _tensor_shapes(path, n)) is not None}
    return write_manifest(path, {"tensors": tensors}, algo, MODEL_FORMAT, include=_hashed)


def verify_model_dir(path: str) -> dict | None:
    """The manifest after `path` verified against it; None when it has none. CheckpointError on any mismatch,
    including a weight file the manifest does not list (it would be loaded instead of / beside ours)."""
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        return None
    manifest = verify_rank_dir(path, None, MODEL_FORMAT, "model manifest")
    listed = set(manifest["files"])
    for name in sorted(os.listdir(path)):
        if is_weight_file(name) and name not in listed and os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"{os.path.join(path, name)}: a weight file {MANIFEST} does not list (added after "
                                  "the directory was written); remove it or restore the directory")
    return manifest


def read_safetensors_header(path: str) -> dict[str, tuple[str, tuple, tuple]]:
    """{tensor: (dtype, shape, (begin, end))} of a safetensors file, validated against the file size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadWeightsError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise BadWeightsError(f"{path}: safetensors header length {n} exceeds "
                                      f"{'the file' if n <= MAX_HEADER_BYTES else 'the 100 MB limit'} "
                                      f"({size} bytes; truncated or not a safetensors file)")
            raw = f.read(n)
    except OSError as exc:
        raise BadWeightsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadWeightsError(f"{path}: safetensors header is not valid JSON (corrupted?)") from None
    if not isinstance(header, dict):
        raise BadWeightsError(f"{path}: safetensors header is a JSON {type(header).__name__}, expected an object")
    data = size - 8 - n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise BadWeightsError(f"{path}: tensor {name}: header entry is not an object")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in _ST_ITEMSIZE:
            raise BadWeightsError(f"{path}: tensor {name}: dtype {dtype!r} is not a safetensors dtype")
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape)):
            raise BadWeightsError(f"{path}: tensor {name}: shape {str(shape)[:60]} is not a list of sizes")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            raise BadWeightsError(f"{path}: tensor {name}: data_offsets {str(offsets)[:60]} outside the "
                                  f"{data}-byte data section (truncated?)")
        nbytes = int(np.prod(shape, dtype=object)) * _ST_ITEMSIZE[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise BadWeightsError(f"{path}: tensor {name}: {offsets[1] - offsets[0]} data bytes for shape {shape} "
                                  f"{dtype} ({nbytes} expected)")
        out[name] = (dtype, tuple(shape), tuple(offsets))
    return out


def check_safetensors_files(path: str) -> None:
    """Validate the header of every safetensors file in directory `path` (before a library opens them)."""
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            read_safetensors_header(os.path.join(path, name))


# ----------------------------------------------------------------------------- writing a whole directory


def staging_dir(final: str) -> str:
    """Where a directory is written before `publish_dir` moves it to `final` (same filesystem)."""
    return final.rstrip("/") + ".partial"


def publish_dir(staged: str, final: str) -> None:
    """Replace `final` by the fully written `staged` directory (a rename; a planted symlink at `final`
    is replaced, never followed). The old `final` is removed only after the new one is in place."""
    old = final.rstrip("/") + ".replaced"
    if os.path.lexists(old):
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
    if os.path.lexists(final):
        os.replace(final, old)
    os.replace(staged, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    if os.path.lexists(old):
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)


def publish_files(staged: str, final: str) -> list[str]:
    """Move every file of the fully written `staged` directory into `final` (created if needed), one
    rename each: a file planted (or a symlink) under the same name in `final` is replaced, never written
    through; other files of `final` are left alone. `staged` is removed."""
    os.makedirs(final, exist_ok=True)
    names = sorted(os.listdir(staged))
    for name in names:
        os.replace(os.path.join(staged, name), os.path.join(final, name))
    fsync_dir(final)
    shutil.rmtree(staged, ignore_errors=True)
    return names


def same_or_nested(a: str, b: str) -> bool:
    """True when paths `a` and `b` are the same directory or one contains the other (symlinks resolved)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep) or rb.startswith(ra.rstrip(os.sep) + os.sep)
