"""`convert_checkpoint`: any supported source format -> a model directory of this project.

Steps, identical for every format: read foreign tensor metadata (no data),
map names through the format's table in `model/weight_tables.py`, resolve the
model config (preset or shapes + hints), check every name and shape, then
stream tensor by tensor into safetensors shards.
"""
from __future__ import annotations

import logging
import os

from ..model.weight_tables import WORD_EMBEDDING
from . import hf, megatron, mindspore
from .common import (
    DEFAULT_SHARD_BYTES,
    ConversionError,
    LayerCount,
    PlainTensor,
    check_shapes,
    map_names,
    refuse_overlap,
    resolve_config,
    save_model_dir,
    shape_hints,
)

logger = logging.getLogger("paddle_pangu.convert")
FORMATS = {"mindspore": mindspore, "megatron": megatron, "hf": hf}
REF_VOCAB = 40000  # REF "Model sizes": vocabulary 40000


def read_source(fmt: str, src: str, trust_pickle: bool = False):
    """(foreign tensors, config hints) of `src` in format `fmt` (`trust_pickle`: Megatron .pt only)."""
    if fmt not in FORMATS:
        raise ConversionError(f"--from {fmt!r}: expected one of {sorted(FORMATS)}")
    if fmt == "mindspore":
        return mindspore.read_mindspore(src), {}
    if fmt == "megatron":
        return megatron.read_megatron(src, trust_pickle)
    return hf.read_hf(src)


def convert_checkpoint(fmt: str, src: str, out_dir: str, preset: str | None = None, overrides: dict | None = None,
                       dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES, trust_pickle: bool = False):
    """Convert `src` and write a `PanGuForCausalLM.from_pretrained`-loadable directory; returns the config."""
    module = FORMATS.get(fmt)
    refuse_overlap(src, out_dir, f"convert --from {fmt}")
    tensors, hints = read_source(fmt, src, trust_pickle)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    canonical = [module.ALIASES.get(n, n) for n in tensors]
    if preset:
        num_layers = resolve_config(preset, {}, overrides, src).num_layers
    else:
        num_layers = overrides.get("num_layers") or module.num_layers_from_names(canonical)
    plain = map_names(tensors, module.name_map(LayerCount(num_layers)), src, module.ALIASES, module.IGNORE)
    hints = {**shape_hints({k: v.shape for k, v in plain.items()}), "num_layers": num_layers, **hints}
    if fmt == "megatron":
        hints["vocab_size"] = _megatron_vocab(hints["vocab_size"], overrides)
    config = resolve_config(preset, hints, overrides, src)
    if fmt == "megatron":
        plain = _trim_vocab(plain, config.vocab_size, src)
    check_shapes({k: v.shape for k, v in plain.items()}, config, src)
    logger.info("converting %s (%s) -> %s: %d tensors, %.1fM parameters, hidden_act=%s, dtype=%s",
                src, fmt, out_dir, len(plain), config.num_parameters() / 1e6, config.hidden_act, dtype)
    save_model_dir(out_dir, config, plain, dtype, max_shard_bytes)
    _write_tokenizer(src, out_dir, config.vocab_size)
    return config


def _write_tokenizer(src: str, out_dir: str, vocab_size: int) -> None:
    """The source directory's vocab.model if it has one (HF releases do), else pcl-pangu's: every
    PanGu-alpha release uses the same 40000-piece SentencePiece model (REF "Tokenizer")."""
    from ..tokenizer import save_tokenizer_files, tokenizer_source

    source = tokenizer_source(src) if os.path.isdir(src) else None
    if not save_tokenizer_files(out_dir, source, vocab_size):
        logger.info("no tokenizer files written: vocab_size %d is smaller than the tokenizer's", vocab_size)


def _megatron_vocab(rows: int, overrides: dict) -> int:
    """Megatron pads the vocabulary (to a multiple of 128 * mp); the true size is REF's 40000 unless told."""
    if "vocab_size" in overrides:
        return overrides["vocab_size"]
    return REF_VOCAB if rows >= REF_VOCAB else rows


def _trim_vocab(plain: dict[str, PlainTensor], vocab: int, src: str) -> dict[str, PlainTensor]:
    emb = plain[WORD_EMBEDDING]
    rows = emb.shape[0]
    if rows < vocab:
        raise ConversionError(f"{src}: word embedding has {rows} rows, fewer than vocab_size={vocab}")
    if rows == vocab:
        return plain
    logger.info("dropping %d Megatron vocabulary padding rows (%d -> %d)", rows - vocab, rows, vocab)
    foreign = emb.foreign
    trimmed = type(foreign)((vocab,) + tuple(foreign.shape[1:]), foreign.dtype,
                            lambda: foreign.load()[:vocab], foreign.source)
    return {**plain, WORD_EMBEDDING: PlainTensor(emb.name, (vocab,) + tuple(emb.shape[1:]), trimmed, emb.transpose)}
