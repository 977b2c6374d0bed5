"""Shared conversion machinery: lazy tensors, name/shape checks, config resolution, model-directory I/O.

Every converter turns its source into `{foreign_name: LazyTensor}` (shape and
dtype known, data read on demand), maps names through a declarative table of
`paddle_pangu.model.weight_tables`, checks every name and shape against the
model config *before* reading any data, then streams tensor by tensor into a
PaddleNLP model directory (`config.json` + `model.safetensors` or
`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`), which
`PanGuForCausalLM.from_pretrained(dir)` loads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Iterable

import numpy as np

from ..config import PanGuConfig, get_preset
from ..config.presets import PRESETS
from ..model.weight_tables import NameRule, plain_param_shapes
from paddle_pangu.errors import PanGuError

logger = logging.getLogger("paddle_pangu.convert")

SAFE_WEIGHTS_NAME = "model.safetensors"  # paddlenlp.utils.env.SAFE_WEIGHTS_NAME
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PADDLE_WEIGHTS_NAME = "model_state.pdparams"
DEFAULT_SHARD_BYTES = 2 * 1024**3
DTYPES = {"float32": np.float32, "float16": np.float16}


class ConversionError(PanGuError, ValueError):
    """A checkpoint that cannot be converted as asked; the message lists every problem."""


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
    """A plain (Paddle-layout) parameter produced from one foreign tensor."""

    name: str
    shape: tuple
    foreign: LazyTensor
    transpose: bool

    def load(self, dtype) -> np.ndarray:
        arr = self.foreign.load()
        if self.transpose:
            arr = arr.T
        return np.ascontiguousarray(arr, dtype=dtype)


def _fmt(items: Iterable[str], limit: int = 20) -> str:
    items = sorted(items)
    head = ", ".join(items[:limit])
    return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def map_names(foreign: dict[str, LazyTensor], rules: list[NameRule], source: str,
              aliases: dict[str, str] | None = None, ignore=None) -> dict[str, PlainTensor]:
    """Apply a name table. Raises ConversionError listing missing and unexpected foreign tensors."""
    aliases = aliases or {}
    by_foreign = {r.foreign: r for r in rules}
    found: dict[str, LazyTensor] = {}
    unexpected, ignored = [], []
    for name, tensor in foreign.items():
        canonical = aliases.get(name, name)
        if canonical in by_foreign:
            if canonical in found:
                raise ConversionError(f"{source}: tensor {canonical!r} appears twice (also as alias {name!r})")
            found[canonical] = tensor
        elif ignore is not None and ignore.search(name):
            ignored.append(name)
        else:
            unexpected.append(name)
    missing = [r.foreign for r in rules if r.foreign not in found]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_fmt(unexpected)}")
    if problems:
        raise ConversionError(f"{source}: " + "; ".join(problems) + " (check --preset / the source format)")
    if ignored:
        logger.info("%s: skipped %d non-model entries (optimizer state, counters), e.g. %s",
                    source, len(ignored), ignored[0])
    out = {}
    for r in rules:
        t = found[r.foreign]
        if r.transpose and len(t.shape) != 2:
            raise ConversionError(f"{source}: {r.foreign} has shape {t.shape}; expected a matrix")
        shape = tuple(reversed(t.shape)) if r.transpose else tuple(t.shape)
        out[r.plain] = PlainTensor(r.plain, shape, t, r.transpose)
    return out


def check_shapes(tensors: dict[str, tuple], config: PanGuConfig, source: str) -> None:
    """Compare plain names and shapes with `config`; raise ConversionError listing every difference."""
    expected = plain_param_shapes(config)
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    wrong = [f"{n}: got {tuple(tensors[n])}, expected {expected[n]}"
             for n in expected if n in tensors and tuple(tensors[n]) != tuple(expected[n])]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_fmt(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) with the config "
                        f"(hidden={config.hidden_size}, layers={config.num_layers}, ffn={config.ffn_hidden_size}, "
                        f"vocab={config.vocab_size}, seq={config.max_position_embeddings}): " + "; ".join(wrong[:10]))
    if problems:
        raise ConversionError(f"{source}: " + "; ".join(problems))


def count_blocks(names: Iterable[str], pattern) -> int:
    """Number of blocks from names matching a regex with one integer group."""
    idx = {int(m.group(1)) for n in names if (m := pattern.search(n))}
    if idx and idx != set(range(max(idx) + 1)):
        raise ConversionError(f"block indices are not contiguous: missing {sorted(set(range(max(idx) + 1)) - idx)}")
    return len(idx)


class LayerCount:
    """The two fields a name map needs before the full config is known."""

    def __init__(self, num_layers: int):
        self.num_layers, self.num_blocks = num_layers, num_layers - 1


def resolve_config(preset: str | None, hints: dict, overrides: dict, source: str) -> PanGuConfig:
    """Model config from --preset, else from shape hints (hidden, layers, ffn, vocab, seq, heads).

    The attention head count cannot be read from tensor shapes; without a
    preset or an explicit --num-heads it is taken from the REF preset with the
    same hidden size. The activation defaults to gelu_tanh (REF "activation":
    the released checkpoints) unless overridden.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if preset:
        fields = {**PRESETS[_preset_key(preset)], "hidden_act": hints.get("hidden_act", "gelu_tanh"), **overrides}
        return PanGuConfig(**fields)
    fields = {"hidden_act": "gelu_tanh", **hints, **overrides}
    if "num_attention_heads" not in fields:
        same = [p for p in PRESETS.values() if p["hidden_size"] == fields.get("hidden_size")]
        if not same:
            raise ConversionError(
                f"{source}: cannot infer the number of attention heads for hidden size {fields.get('hidden_size')}; "
                "pass --preset or --num-heads")
        fields["num_attention_heads"] = same[0]["num_attention_heads"]
    return PanGuConfig(**fields)


def _preset_key(name: str) -> str:
    try:
        get_preset(name)
    except KeyError as exc:
        raise ConversionError(str(exc)) from None
    return name.lower().replace("pangu-", "").replace("pangu_", "")


def shape_hints(shapes: dict[str, tuple]) -> dict:
    """Config fields readable from plain shapes (everything but the head count)."""
    from ..model import weight_tables as wt

    hints = {}
    if wt.WORD_EMBEDDING in shapes:
        hints["vocab_size"], hints["hidden_size"] = shapes[wt.WORD_EMBEDDING]
    if wt.POSITION_EMBEDDING in shapes:
        hints["max_position_embeddings"] = shapes[wt.POSITION_EMBEDDING][0]
    fc_in = wt.QUERY_LAYER_PREFIX + "mlp.fc_in.weight"
    if fc_in in shapes:
        hints["ffn_hidden_size"] = shapes[fc_in][1]
    return hints


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


def save_model_dir(out_dir: str, config: PanGuConfig, tensors: dict[str, "PlainTensor | LazyTensor"],
                   dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Stream `tensors` into a PaddleNLP model directory; at most one shard is held in memory.

    Returns the written weight files. `config.json` records architectures
    ["PanGuForCausalLM"] and the dtype, as PaddleNLP's save_pretrained does.
    """
    os.makedirs(out_dir, exist_ok=True)
    config.architectures = ["PanGuForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(out_dir)
    return write_safetensors(out_dir, tensors, dtype, max_shard_bytes)


def write_safetensors(out_dir: str, tensors: dict, dtype: str, max_shard_bytes: int,
                      metadata_format: str = "np") -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`.

    Each file is streamed: the header is written from the known shapes, then
    tensor after tensor, so only one tensor is in memory at a time.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    np_dtype = DTYPES[dtype]
    items = [(n, t.shape) for n, t in tensors.items()]
    plan = _shard_plan(items, np.dtype(np_dtype).itemsize, max_shard_bytes)
    files = [SAFE_WEIGHTS_NAME] if len(plan) == 1 else [
        f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    progress = _Progress(len(items), "writing")
    weight_map, total = {}, 0
    for names, fname in zip(plan, files):
        total += stream_safetensors(os.path.join(out_dir, fname), {n: tensors[n] for n in names}, np_dtype,
                                    {"format": metadata_format}, progress)
        weight_map.update({n: fname for n in names})
    if len(files) > 1:
        with open(os.path.join(out_dir, SAFE_WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    _remove_stale(out_dir, files + ([SAFE_WEIGHTS_INDEX_NAME] if len(files) > 1 else []))
    return files


_ST_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


def stream_safetensors(path: str, tensors: dict, np_dtype, metadata: dict, progress=None) -> int:
    """Write one safetensors file tensor by tensor (format: u64 header size, JSON header, raw data)."""
    np_dtype = np.dtype(np_dtype)
    header, offset = {"__metadata__": metadata}, 0
    for name, t in tensors.items():
        nbytes = int(np.prod(t.shape)) * np_dtype.itemsize
        header[name] = {"dtype": _ST_NAMES[np_dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data start to 8 bytes
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, t in tensors.items():
            arr = _load_as(t, np_dtype)
            if tuple(arr.shape) != tuple(t.shape):
                raise ConversionError(f"{name}: loaded shape {arr.shape} differs from the declared {tuple(t.shape)}")
            f.write(np.ascontiguousarray(arr).data)  # no extra copy
            if progress is not None:
                progress.step(name)
    return offset


def _load_as(t, np_dtype) -> np.ndarray:
    if isinstance(t, PlainTensor):
        return t.load(np_dtype)
    return np.ascontiguousarray(t.load(), dtype=np_dtype)


def _remove_stale(out_dir: str, keep: list[str]) -> None:
    """Drop weight files of an earlier conversion into the same directory (they would shadow ours)."""
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


def load_model_dir(path: str) -> tuple[PanGuConfig, dict[str, LazyTensor]]:
    """Config and lazily-read plain tensors of a model directory written here or by save_pretrained."""
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: expected a model directory (config.json + weights)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConversionError(f"{path}: no config.json; is this a model directory?")
    config = PanGuConfig.from_pretrained(path)
    return config, read_weight_files(path)


def read_weight_files(path: str, variant: str | None = None) -> dict[str, LazyTensor]:
    """Plain tensors of `path` (safetensors single/indexed, or pdparams), optionally for a variant like 'tp00'."""
    def name(base):  # paddlenlp's _add_variant: the variant goes before the last extension
        if not variant:
            return base
        parts = base.split(".")
        return ".".join(parts[:-1] + [variant] + parts[-1:])

    index = os.path.join(path, name(SAFE_WEIGHTS_INDEX_NAME))
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        return iter_safetensors([os.path.join(path, fn) for fn in files])
    single = os.path.join(path, name(SAFE_WEIGHTS_NAME))
    if os.path.exists(single):
        return iter_safetensors([single])
    pdparams = os.path.join(path, name(PADDLE_WEIGHTS_NAME))
    if os.path.exists(pdparams):
        import paddle

        state = paddle.load(pdparams, return_numpy=True)
        return {k: LazyTensor.of(np.asarray(v), pdparams) for k, v in state.items()}
    raise ConversionError(f"{path}: no {name(SAFE_WEIGHTS_NAME)}, {name(SAFE_WEIGHTS_INDEX_NAME)} "
                          f"or {name(PADDLE_WEIGHTS_NAME)} found")


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_}


def torch_to_numpy_dtype(torch_dtype) -> np.dtype:
    """numpy dtype a torch tensor is converted to (bfloat16 is read as float32); needs no torch import."""
    name = str(torch_dtype).replace("torch.", "")
    return np.dtype(np.float32) if name == "bfloat16" else np.dtype(name)


def iter_safetensors(files: list[str]) -> dict[str, LazyTensor]:
    """Lazy tensors of safetensors files, read one at a time (header parsed without loading data)."""
    from safetensors import safe_open

    out = {}
    for fn in files:
        with open(fn, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            if meta["dtype"] not in _ST_DTYPES:
                raise ConversionError(f"{fn}: tensor {key} has dtype {meta['dtype']}; expected one of {sorted(_ST_DTYPES)}")

            def load(fn=fn, key=key):
                with safe_open(fn, framework="np") as g:
                    return g.get_tensor(key)

            out[key] = LazyTensor(tuple(meta["shape"]), np.dtype(_ST_DTYPES[meta["dtype"]]), load, fn)
    return out
