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

import logging
import os
from typing import Iterable

import numpy as np

from ..config import PanGuConfig, get_preset
from ..config.presets import PRESETS
from ..errors import PanGuError
from ..io.weights import (  # noqa: F401  (the weight-file formats live in io/weights.py; re-exported here)
    DEFAULT_SHARD_BYTES,
    DTYPES,
    PADDLE_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    LazyTensor,
    PlainTensor,
    iter_safetensors,
    read_weight_files,
    stream_safetensors,
    write_safetensors,
)
from ..io.durable import atomic_write
from ..io.model_dir import same_or_nested, seal_model_dir, verify_model_dir
from ..model.weight_tables import NameRule, plain_param_shapes

logger = logging.getLogger("paddle_pangu.convert")


class ConversionError(PanGuError, ValueError):
    """A checkpoint that cannot be converted as asked; the message lists every problem."""


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


def save_model_dir(out_dir: str, config: PanGuConfig, tensors: dict[str, "PlainTensor | LazyTensor"],
                   dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Stream `tensors` into a PaddleNLP model directory; at most one shard is held in memory.

    Returns the written weight files. `config.json` records architectures
    ["PanGuForCausalLM"] and the dtype, as PaddleNLP's save_pretrained does.
    """
    os.makedirs(out_dir, exist_ok=True)
    config.architectures = ["PanGuForCausalLM"]
    config.dtype = dtype
    save_config(config, out_dir)
    files = write_safetensors(out_dir, tensors, dtype, max_shard_bytes)
    seal_model_dir(out_dir)  # MANIFEST.json: every loader verifies sizes and hashes (io/model_dir.py)
    return files


def save_config(config, out_dir: str) -> None:
    """config.json as save_pretrained writes it, but atomically (a planted symlink is replaced, not followed)."""
    atomic_write(os.path.join(out_dir, "config.json"), config.to_json_file)


def refuse_overlap(src: str, out_dir: str, what: str) -> None:
    """An output that is, contains or lies inside the input would overwrite or shadow what is being read."""
    if same_or_nested(src, out_dir):
        raise ConversionError(f"{what}: --output {out_dir!r} is, contains or lies inside the input {src!r}; writing "
                              "there would overwrite the weights being read; choose a separate directory")


def open_model_config(path: str) -> PanGuConfig:
    """config.json of a model directory, validated (one-line ConfigError), after its MANIFEST.json verified."""
    from ..config.config_file import read_config_file

    read_config_file(os.path.join(path, "config.json"))
    verify_model_dir(path)
    return PanGuConfig.from_pretrained(path)


# ----------------------------------------------------------------------------- reading


def load_model_dir(path: str) -> tuple[PanGuConfig, dict[str, LazyTensor]]:
    """Config and lazily-read plain tensors of a model directory written here or by save_pretrained."""
    if not os.path.isdir(path):
        raise ConversionError(f"{path}: expected a model directory (config.json + weights)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConversionError(f"{path}: no config.json; is this a model directory?")
    config = open_model_config(path)
    return config, read_weight_files(path)


def torch_to_numpy_dtype(torch_dtype) -> np.dtype:
    """numpy dtype a torch tensor is converted to (bfloat16 is read as float32); needs no torch import."""
    name = str(torch_dtype).replace("torch.", "")
    return np.dtype(np.float32) if name == "bfloat16" else np.dtype(name)
