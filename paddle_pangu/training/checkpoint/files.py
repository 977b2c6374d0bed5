"""Durable files of a checkpoint: the shared machinery lives in `paddle_pangu/io/durable.py`
(temporary name + fsync + rename, xxh3-128 / sha256 hashes, per-directory `MANIFEST.json`)."""
from paddle_pangu.io.durable import (FORMAT, HASHES, MANIFEST, atomic_write, atomic_write_json, atomic_write_text,
                                     fsync_dir, hash_file, read_json, verify_rank_dir, write_manifest)

__all__ = ["FORMAT", "HASHES", "MANIFEST", "atomic_write", "atomic_write_json", "atomic_write_text", "fsync_dir",
           "hash_file", "read_json", "verify_rank_dir", "write_manifest"]
