"""Memory-mapped token storage: `<prefix>.bin` + `<prefix>.idx` (format documented in docs/DATA.md).

`.bin`: the token ids of every document, back to back, little-endian
`dtype` (uint16 for the 40000-piece vocabulary; uint32 above 65535). Each
document already ends with the separator token (REF: 9 `<eot>`).

`.idx` (little-endian):
    8 bytes   magic  b"PGUIDX\\x00\\x00"
    uint64    format version (1)
    uint8     dtype code (1 = uint16, 2 = uint32)
    7 bytes   zero padding (keeps the arrays 8-byte aligned)
    uint64    number of documents N
    uint64    number of tokens T
    int64[N]  document lengths (tokens)
    int64[N]  document offsets (in tokens, into .bin)

Both files are opened with np.memmap: nothing is read until a document is
indexed, so datasets larger than memory work.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"PGUIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint16, 2: np.uint32}
_HEADER = struct.Struct("<8sQB7xQQ")


def dtype_for_vocab(vocab_size: int):
    """Smallest supported token dtype for this vocabulary."""
    return np.uint16 if vocab_size <= 65536 else np.uint32


def _dtype_code(dtype) -> int:
    for code, dt in DTYPE_CODES.items():
        if np.dtype(dt) == np.dtype(dtype):
            return code
    raise ValueError(f"token dtype {dtype}: expected uint16 or uint32")


class IndexedDatasetBuilder:
    """Appends documents to `<prefix>.bin`; `finalize()` writes `<prefix>.idx`.

    Writes go to the given prefix directly: the pipeline points it into a
    temporary directory that is renamed only when everything is complete.
    """

    def __init__(self, prefix: str | os.PathLike, dtype=np.uint16):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self._code = _dtype_code(self.dtype)
        self._max = np.iinfo(self.dtype).max
        self._bin = open(self.prefix.with_suffix(".bin"), "wb")
        self._lengths: list[int] = []  # of the documents added one by one since the last whole dataset
        self._length_parts: list[np.ndarray] = []  # [N_i] earlier lengths, as arrays
        self.num_tokens = 0

    def add_document(self, ids) -> None:
        arr = np.asarray(ids, dtype=np.int64)  # [L]
        if arr.ndim != 1:
            raise ValueError(f"add_document: expected a 1-D list of token ids, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() > self._max):
            raise ValueError(f"add_document: token ids must be in [0, {self._max}] for {self.dtype}, got [{arr.min()}, {arr.max()}]")
        self._bin.write(arr.astype(self.dtype).tobytes())
        self._lengths.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def add_dataset(self, ds: "IndexedDataset", chunk_tokens: int = 1 << 22) -> None:
        """Append every document of `ds` in order, as `add_document` would, with no per-document Python: the
        tokens are copied in chunks of `chunk_tokens` and the lengths as one array (the Ray engine joins its
        shards with this; at corpus scale a per-document loop on the driver is hours)."""
        if ds.dtype != self.dtype:
            raise ValueError(f"add_dataset: {ds.prefix} holds {ds.dtype} tokens, this dataset {self.dtype}")
        lengths = np.asarray(ds.lengths, np.int64)  # [N]
        ends = np.cumsum(lengths)
        if len(lengths) and (int(ds.offsets[0]) != 0 or not np.array_equal(ds.offsets[1:], ends[:-1])
                             or int(ends[-1]) != ds.num_tokens):
            for i in range(len(ds)):  # documents not stored back to back: copy them one by one
                self.add_document(ds[i])
            return
        for lo in range(0, ds.num_tokens, chunk_tokens):
            self._bin.write(np.ascontiguousarray(ds.tokens[lo:lo + chunk_tokens]).tobytes())
        self._length_parts += [np.asarray(self._lengths, np.int64), lengths]
        self._lengths = []
        self.num_tokens += ds.num_tokens

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.concatenate(self._length_parts + [np.asarray(self._lengths, dtype=np.int64)])  # [N]
        offsets = np.zeros_like(lengths)
        if len(lengths):
            offsets[1:] = np.cumsum(lengths)[:-1]
        with open(self.prefix.with_suffix(".idx"), "wb") as fh:
            fh.write(_HEADER.pack(MAGIC, VERSION, self._code, len(lengths), self.num_tokens))
            fh.write(lengths.tobytes())
            fh.write(offsets.tobytes())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self._bin.close()


class IndexedDataset:
    """Read-only view of a `.bin/.idx` pair: `ds[i]` is document i as a numpy array."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        idx_path, bin_path = self.prefix.with_suffix(".idx"), self.prefix.with_suffix(".bin")
        for p in (idx_path, bin_path):
            if not p.is_file():
                raise FileNotFoundError(f"indexed dataset {str(self.prefix)!r}: missing {p.name}")
        with open(idx_path, "rb") as fh:
            head = fh.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise ValueError(f"{idx_path}: truncated header ({len(head)} bytes)")
        magic, version, code, n_docs, n_tokens = _HEADER.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"{idx_path}: bad magic {magic!r}, expected {MAGIC!r} (not a paddle_pangu index)")
        if version != VERSION or code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unsupported version {version} / dtype code {code}")
        expected = _HEADER.size + 16 * n_docs
        if idx_path.stat().st_size != expected:
            raise ValueError(f"{idx_path}: size {idx_path.stat().st_size} != {expected} expected for {n_docs} documents")
        self.dtype = np.dtype(DTYPE_CODES[code])
        if bin_path.stat().st_size != n_tokens * self.dtype.itemsize:
            raise ValueError(f"{bin_path}: size {bin_path.stat().st_size} != {n_tokens} tokens x {self.dtype.itemsize} bytes")
        self.num_tokens = int(n_tokens)
        arrays = np.memmap(idx_path, dtype=np.int64, mode="r", offset=_HEADER.size, shape=(2 * n_docs,))
        self.lengths = arrays[:n_docs]  # [N]
        self.offsets = arrays[n_docs:]  # [N]
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.offsets[i])
        return self.tokens[start:start + int(self.lengths[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset+length) of document i."""
        start = int(self.offsets[i]) + offset
        end = int(self.offsets[i]) + int(self.lengths[i]) if length is None else start + length
        return self.tokens[start:end]
