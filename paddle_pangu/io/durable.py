"""Durable files: write to a temporary name, fsync, rename; hash; manifests of a directory.

A file is never visible under its final name until its bytes are on disk:
`atomic_write` writes `NAME.tmp-<pid>` next to it, fsyncs it, renames it over
`NAME` (replacing a symlink planted at `NAME` rather than writing through it)
and fsyncs the directory. A directory's `MANIFEST.json` (written last, the
same way) lists every file with its size and hash, so a flipped byte, a
truncation or a missing file is found before anything is loaded. Checkpoints
(`training/checkpoint/`) and model directories (`io/model_dir.py`) share it.

Hash: xxh3-128 by default (a streaming non-cryptographic hash; it detects
corruption, not tampering), sha256 on request. Measured on the project's
2-core machine under load 10: sha256 0.38 GB/s (2.6 s per GB), xxh3-128
4.1 GB/s (0.25 s per GB), so xxh3 keeps verification ~10x cheaper than the
read it rides on; `checkpoint.hash: sha256` is there for a cryptographic digest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from paddle_pangu.errors import CheckpointError
from paddle_pangu.utils.json_file import read_json as read_json_file

MANIFEST = "MANIFEST.json"
FORMAT = "paddle_pangu.checkpoint/2"
HASHES = ("xxh3_128", "sha256")
_CHUNK = 1 << 22


def _hasher(algo: str):
    if algo == "sha256":
        return hashlib.sha256()
    if algo == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    raise CheckpointError(f"checkpoint hash {algo!r}: expected one of {', '.join(HASHES)}")


def hash_file(path: str, algo: str = "xxh3_128") -> tuple[int, str]:
    """(size in bytes, hex digest) of `path`, streamed in 4 MiB chunks."""
    h, size = _hasher(algo), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def fsync_dir(path: str) -> None:
    """Make a rename / creation inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, writer) -> None:
    """`writer(tmp_path)` writes the file; it is then fsynced and renamed to `path`.

    On any error the temporary file is removed and the error propagates; `path`
    keeps whatever it held before (or stays absent).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)  # never write through a link planted at the temporary name
        try:
            writer(tmp)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports a failed write (ENOSPC) as SafetensorError
            code = re.search(r"(?:code: |os error )(\d+)", str(exc))
            if type(exc).__name__ != "SafetensorError" or not code:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), path) from exc
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def write_manifest(rank_dir: str, meta: dict, algo: str, fmt: str = FORMAT, include=None) -> dict:
    """Hash every file of `rank_dir` (as it is on disk; subdirectories are not listed; `include(name)`
    chooses when given) and write `MANIFEST.json` last."""
    files = {}
    for name in sorted(os.listdir(rank_dir)):
        if name == MANIFEST or ".tmp-" in name or not os.path.isfile(os.path.join(rank_dir, name)):
            continue
        if include is not None and not include(name):
            continue
        size, digest = hash_file(os.path.join(rank_dir, name), algo)
        files[name] = {"size": size, "hash": digest}
    manifest = {"format": fmt, "hash": algo, "files": files, **meta}
    atomic_write_json(os.path.join(rank_dir, MANIFEST), manifest)
    return manifest


def read_json(path: str, what: str) -> dict:
    """A checkpoint's JSON object (manifest, marker, state); CheckpointError naming the file otherwise."""
    return read_json_file(path, what, CheckpointError)


def verify_rank_dir(rank_dir: str, expect: dict | None = None, fmt: str = FORMAT,
                    what: str = "checkpoint manifest") -> dict:
    """The manifest of `rank_dir` after checking every listed file's size and hash.

    `expect` (e.g. {"step": 100, "rank": 0}) must match the manifest's fields.
    Raises CheckpointError naming the first file that does not verify.
    """
    manifest = read_json(os.path.join(rank_dir, MANIFEST), what)
    if manifest.get("format") != fmt or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{rank_dir}/{MANIFEST}: not a {fmt} manifest")
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise CheckpointError(f"{rank_dir}/{MANIFEST}: {key}={manifest.get(key)!r}, expected {value!r}")
    for name, entry in manifest["files"].items():
        if not isinstance(entry, dict) or os.path.basename(name) != name or name in (".", ".."):
            raise CheckpointError(f"{rank_dir}/{MANIFEST}: malformed entry {name!r}")
        path = os.path.join(rank_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: listed in the manifest but missing")
        size = os.path.getsize(path)
        if size != entry.get("size"):
            raise CheckpointError(f"{path}: {size} bytes, the manifest says {entry.get('size')} (truncated or overwritten)")
        if hash_file(path, manifest.get("hash", ""))[1] != entry.get("hash"):
            raise CheckpointError(f"{path}: {manifest['hash']} hash differs from {MANIFEST} (corrupted bytes)")
    return manifest
