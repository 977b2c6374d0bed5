"""The one place this project reads and writes model weight files.

Training (the final model, `model.init_from`), conversion (`pangu convert`),
resharding (`pangu reshard`) and loading all go through here, so the file
formats are defined once:

* a plain model directory: `model.safetensors`, or shards
  `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`
  (PaddleNLP's names), or `model_state.pdparams`;
* an mp x pp layout: one `model.<variant>.safetensors` per (mp rank, pp stage)
  with PaddleNLP's variant suffix (`tp01`, `pp00`, `tp01_pp00`) and a
  `checkpoint_layout.json` recording the degrees.

Tensors are handled lazily (`LazyTensor`: shape and dtype known, data read on
demand) and written by streaming, one tensor in memory at a time. This module
imports only numpy, safetensors and (lazily) paddle; nothing of the model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable

import numpy as np

from ..errors import PanGuError
from ..utils.json_file import read_json
from .durable import atomic_write, atomic_write_json
from .model_dir import read_safetensors_header

logger = logging.getLogger("paddle_pangu.io")

SAFE_WEIGHTS_NAME = "model.safetensors"  # paddlenlp.utils.env.SAFE_WEIGHTS_NAME
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PADDLE_WEIGHTS_NAME = "model_state.pdparams"
LAYOUT_FILE = "checkpoint_layout.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3
# stored dtypes; numpy has no bfloat16, so "bfloat16" is written as safetensors BF16 (the upper 16 bits of
# float32, rounded to nearest even: the format torch, Paddle and PaddleNLP read) and read back as float32
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16"}


def to_bfloat16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(arr), ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _itemsize(np_dtype) -> int:
    return 2 if isinstance(np_dtype, str) and np_dtype == "bfloat16" else np.dtype(np_dtype).itemsize


class WeightFileError(PanGuError, ValueError):
    """A weight file or directory that cannot be read or written as asked (names the file and the problem)."""


@dataclasses.dataclass
class LazyTensor:
    """A tensor whose shape/dtype are known and whose data is read only when `load()` is called."""

    shape: tuple
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    source: str = ""

    @staticmethod
    def of(array: np.ndarray, source: str = "") -> "LazyTensor":
        return LazyTensor(tuple(array.shape), array.dtype, lambda: array, source)


@dataclasses.dataclass
class PlainTensor:
    """A plain (Paddle-layout) parameter produced from one foreign tensor, transposed on load if needed."""

    name: str
    shape: tuple
    foreign: LazyTensor
    transpose: bool

    def load(self, dtype) -> np.ndarray:
        arr = self.foreign.load()
        if self.transpose:
            arr = arr.T
        return np.ascontiguousarray(arr, dtype=dtype)


# ----------------------------------------------------------------------------- rank files and layout


def variant_name(mp_rank: int, pp_stage: int, mp: int, pp: int) -> str:
    """PaddleNLP's suffix for one rank: 'tp01', 'pp00', 'tp01_pp00' ('' for mp1 pp1)."""
    parts = ([f"tp{mp_rank:02d}"] if mp > 1 else []) + ([f"pp{pp_stage:02d}"] if pp > 1 else [])
    return "_".join(parts)


def rank_file_name(mp_rank: int, pp_stage: int, mp: int, pp: int) -> str:
    """The weight file of one (mp rank, pp stage) in an mp x pp layout, e.g. model.tp01_pp00.safetensors."""
    return f"model.{variant_name(mp_rank, pp_stage, mp, pp)}.safetensors"


def write_layout(dst: str, mp: int, pp: int) -> None:
    """Record the degrees of the rank files in `dst` (read back by `read_layout`)."""
    atomic_write_json(os.path.join(dst, LAYOUT_FILE), {"mp_degree": mp, "pp_degree": pp})


def read_weight_map(index: str, error: type[Exception] = None) -> dict[str, str]:
    """The {tensor name: file name} `weight_map` of a safetensors index (`*.safetensors.index.json`, ours,
    PaddleNLP's or HF's), each file a plain name in the index's own directory; `error` (WeightFileError by
    default) names the index when it is anything else."""
    error = error or WeightFileError
    doc = read_json(index, "a safetensors index with a weight_map", error)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise error(f"{index}: expected a non-empty \"weight_map\" object of tensor name -> file name")
    for key, fn in weight_map.items():
        if not isinstance(fn, str) or not fn or os.path.basename(fn) != fn:
            raise error(f"{index}: weight_map[{key!r}] = {fn!r}, expected a file name in the same directory")
    return weight_map


def read_layout(path: str) -> tuple[int, int] | None:
    """(mp, pp) recorded in `path`'s layout file, or None when there is none."""
    layout_file = os.path.join(path, LAYOUT_FILE)
    if not os.path.exists(layout_file):
        return None
    layout = read_json(layout_file, "a weight layout file", WeightFileError)
    try:
        mp, pp = int(layout["mp_degree"]), int(layout["pp_degree"])
        if not (1 <= mp <= 4096 and 1 <= pp <= 4096):
            raise ValueError("degree out of range")
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightFileError(f"{layout_file}: expected {{\"mp_degree\": N, \"pp_degree\": M}} with 1 <= N, M <= 4096 "
                              f"({type(exc).__name__})") from None
    return mp, pp


# ----------------------------------------------------------------------------- writing


def _shard_plan(items: list[tuple[str, tuple]], itemsize: int, max_bytes: int) -> list[list[str]]:
    shards, current, size = [], [], 0
    for name, shape in items:
        nbytes = int(np.prod(shape)) * itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    return shards + [current] if current else shards


def write_safetensors(out_dir: str, tensors: dict, dtype: str, max_shard_bytes: int,
                      metadata_format: str = "np") -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`.

    Each file is streamed: the header is written from the known shapes, then
    tensor after tensor, so only one tensor is in memory at a time.
    """
    if dtype not in DTYPES:
        raise WeightFileError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    np_dtype = DTYPES[dtype]
    items = [(n, t.shape) for n, t in tensors.items()]
    plan = _shard_plan(items, _itemsize(np_dtype), max_shard_bytes)
    files = [SAFE_WEIGHTS_NAME] if len(plan) == 1 else [
        f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    progress = _Progress(len(items), "writing")
    weight_map, total = {}, 0
    for names, fname in zip(plan, files):
        total += stream_safetensors(os.path.join(out_dir, fname), {n: tensors[n] for n in names}, np_dtype,
                                    {"format": metadata_format}, progress)
        weight_map.update({n: fname for n in names})
    if len(files) > 1:
        atomic_write_json(os.path.join(out_dir, SAFE_WEIGHTS_INDEX_NAME),
                          {"metadata": {"total_size": total}, "weight_map": weight_map})
    _remove_stale(out_dir, files + ([SAFE_WEIGHTS_INDEX_NAME] if len(files) > 1 else []))
    return files


_ST_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def stream_safetensors(path: str, tensors: dict, np_dtype, metadata: dict, progress=None) -> int:
    """Write one safetensors file tensor by tensor (format: u64 header size, JSON header, raw data).
    np_dtype: a numpy float dtype or "bfloat16" (see DTYPES)."""
    bf16 = isinstance(np_dtype, str) and np_dtype == "bfloat16"
    np_dtype = np.dtype(np.float32) if bf16 else np.dtype(np_dtype)
    header, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        nbytes = int(np.prod(t.shape)) * (2 if bf16 else np_dtype.itemsize)
        header[name] = {"dtype": "BF16" if bf16 else _ST_NAMES[np_dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data start to 8 bytes

    def write(tmp):  # atomic: a temporary name in the same directory, fsynced, renamed over `path`
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name, t in tensors.items():
                arr = _load_as(t, np_dtype)
                if tuple(arr.shape) != tuple(t.shape):
                    raise WeightFileError(f"{name}: loaded shape {arr.shape} differs from the declared {tuple(t.shape)}")
                if bf16:
                    arr = to_bfloat16_bits(arr)
                f.write(np.ascontiguousarray(arr).data)  # no extra copy
                if progress is not None:
                    progress.step(name)

    atomic_write(path, write)
    return offset


def save_numpy_safetensors(path: str, arrays: dict[str, np.ndarray]) -> None:
    """One safetensors file of in-memory numpy arrays (metadata format 'np', as the streaming writer)."""
    from safetensors.numpy import save_file

    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata={"format": "np"}))


def save_pdparams(path: str, arrays: dict[str, np.ndarray]) -> None:
    """`model_state.pdparams` as `PanGuForCausalLM.save_pretrained` writes it: float32 tensors, sorted names."""
    import paddle

    weights = {k: paddle.to_tensor(np.asarray(v, dtype="float32")) for k, v in sorted(arrays.items())}
    atomic_write(path, lambda tmp: paddle.save(weights, tmp))


def _load_as(t, np_dtype) -> np.ndarray:
    if isinstance(t, PlainTensor):
        return t.load(np_dtype)
    return np.ascontiguousarray(t.load(), dtype=np_dtype)


def _remove_stale(out_dir: str, keep: list[str]) -> None:
    """Drop weight files of an earlier write into the same directory (they would shadow ours)."""
    ours = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, PADDLE_WEIGHTS_NAME)
    for fname in os.listdir(out_dir):
        is_shard = fname.startswith("model-") and fname.endswith(".safetensors")
        if (is_shard or fname in ours) and fname not in keep:
            os.remove(os.path.join(out_dir, fname))


class _Progress:
    """A log line every few seconds with rate and ETA (tensor counts)."""

    def __init__(self, total: int, what: str, every: float = 5.0):
        self.total, self.what, self.every = total, what, every
        self.done, self.start, self.last = 0, time.time(), time.time()

    def step(self, name: str) -> None:
        self.done += 1
        now = time.time()
        if now - self.last >= self.every or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logger.info("%s %d/%d tensors (%.1f/s, ETA %.0fs) %s", self.what, self.done, self.total, rate, eta, name)
            self.last = now


# ----------------------------------------------------------------------------- reading


def read_weight_files(path: str, variant: str | None = None) -> dict[str, LazyTensor]:
    """Plain tensors of `path` (safetensors single/indexed, or pdparams), optionally for a variant like 'tp00'."""
    def name(base):  # paddlenlp's _add_variant: the variant goes before the last extension
        if not variant:
            return base
        parts = base.split(".")
        return ".".join(parts[:-1] + [variant] + parts[-1:])

    index = os.path.join(path, name(SAFE_WEIGHTS_INDEX_NAME))
    if os.path.exists(index):
        files = sorted(set(read_weight_map(index).values()))
        return iter_safetensors([os.path.join(path, fn) for fn in files])
    single = os.path.join(path, name(SAFE_WEIGHTS_NAME))
    if os.path.exists(single):
        return iter_safetensors([single])
    pdparams = os.path.join(path, name(PADDLE_WEIGHTS_NAME))
    if os.path.exists(pdparams):
        return {k: LazyTensor.of(v, pdparams) for k, v in read_pdparams(pdparams).items()}
    raise WeightFileError(f"{path}: no {name(SAFE_WEIGHTS_NAME)}, {name(SAFE_WEIGHTS_INDEX_NAME)} "
                          f"or {name(PADDLE_WEIGHTS_NAME)} found")


def read_pdparams(path: str) -> dict[str, np.ndarray]:
    """A `.pdparams` state dict as numpy arrays (arrays-only unpickling unless --trust-pickle: io/safe_load.py)."""
    from .safe_load import load_pdparams

    state = load_pdparams(path, return_numpy=True)
    return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray) or not isinstance(v, dict)}


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_, "BF16": np.float32}  # BF16: read back as float32 (exact)


def iter_safetensors(files: list[str]) -> dict[str, LazyTensor]:
    """Lazy tensors of safetensors files, read one at a time (header parsed without loading data)."""
    from safetensors import safe_open

    out = {}
    for fn in files:
        header = read_safetensors_header(fn)  # bounded and validated before anything trusts it
        with open(fn, "rb") as f:
            start = 8 + int.from_bytes(f.read(8), "little")  # the data section follows the header
        for key, (dtype, shape, offsets) in header.items():
            if dtype not in _ST_DTYPES:
                raise WeightFileError(f"{fn}: tensor {key} has dtype {dtype}; expected one of {sorted(_ST_DTYPES)}")

            def load(fn=fn, key=key, dtype=dtype, shape=shape, offsets=offsets, start=start):
                if dtype == "BF16":  # numpy has no bfloat16: the raw bits, widened to float32
                    begin, end = offsets
                    bits = np.fromfile(fn, dtype="<u2", count=(end - begin) // 2, offset=start + begin)
                    return from_bfloat16_bits(bits).reshape(shape)
                with safe_open(fn, framework="np") as g:
                    return g.get_tensor(key)

            out[key] = LazyTensor(shape, np.dtype(_ST_DTYPES[dtype]), load, fn)
    return out


def load_plain_weights(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a model directory or a `.pdparams` file, loaded (for starting a run from weights)."""
    if os.path.isdir(path):
        from .model_dir import verify_model_dir

        verify_model_dir(path)  # a sealed directory (final_model/, convert output) is checked before use
        return {k: t.load() for k, t in read_weight_files(path).items()}
    if os.path.isfile(path):
        return read_pdparams(path)
    raise FileNotFoundError(f"{path}: no such model directory or .pdparams file")
