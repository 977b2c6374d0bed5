"""`manifest.json` of a prepared dataset, and the atomic directory commit.

A prepared dataset directory is complete iff its manifest exists, says
`"complete": true`, and the `.bin/.idx` sizes (and, on request, sha256
checksums) match it. The pipeline builds the whole directory under a
temporary sibling name (`<out>.partial-<pid>`) and renames it into place as
the very last step, so an interrupted run never leaves something a later run
could mistake for a finished dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import DataError, PanGuError

MANIFEST = "manifest.json"
FORMAT = "paddle_pangu.indexed_dataset/v1"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(directory: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json with checksums of every data file named in fields['files']."""
    manifest = {"format": FORMAT, "complete": True, **fields}
    manifest["files"] = {name: file_entry(directory / name) for name in fields.get("files", [])}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    return manifest


class NotADatasetError(PanGuError, FileNotFoundError):
    """A directory given as a prepared dataset has no manifest (a one-line `pangu` error, and a FileNotFoundError)."""


def read_manifest(directory: str | os.PathLike, verify_checksums: bool = False) -> dict[str, Any]:
    """Load and check a prepared dataset's manifest; raise naming what is wrong."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise NotADatasetError(
            f"{d}: no {MANIFEST} - not a prepared dataset, or an incomplete one (rerun `pangu prepare-data`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("complete") is not True:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise DataError(f"{path}: format {manifest.get('format')!r} / complete={manifest.get('complete')!r}, expected {FORMAT!r} / true")
    for name, entry in manifest.get("files", {}).items():
        f = d / name
        if not f.is_file() or f.stat().st_size != entry["bytes"]:
            size = f.stat().st_size if f.is_file() else "missing"
            raise ValueError(f"{f}: size {size} does not match manifest ({entry['bytes']} bytes)")
        if verify_checksums and sha256_file(f) != entry["sha256"]:
            raise ValueError(f"{f}: sha256 does not match {path}")
    return manifest


def partial_dir(final: Path) -> Path:
    """A fresh temporary sibling of `final` for building into."""
    tmp = final.parent / f"{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to its final name."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
        old = final.parent / f"{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
