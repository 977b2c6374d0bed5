"""Split / merge this project's checkpoints between tensor- (mp) and pipeline- (pp) parallel layouts.

Layouts (PaddleNLP's file-name variants, see `paddlenlp.transformers.utils.weight_name_suffix`):

* mp1 pp1: a plain model directory (`model.safetensors` or shards + index, or
  `model_state.pdparams`);
* otherwise one file per (mp rank, pp stage): `model.tp00.safetensors`,
  `model.pp01.safetensors`, `model.tp01_pp00.safetensors` (or the same names
  with `model_state.` / `.pdparams`), every file holding plain parameter
  names with rank-local shapes.

Tensor-parallel splitting is driven by the one table of
`model/weight_tables.py` (`tensor_parallel_rules`, `split_state_dict`,
`merge_state_dicts`); pipeline stages follow
`config.parallel_config.pipeline_layer_counts` (the rule the pipeline model
uses): stage 0 holds the word and position embeddings, the last stage the
final layernorm, the query layer with its top-query table and a copy of the
tied word embedding (REF "output head"). When the vocabulary does not divide
by mp the word embedding is padded with zero rows (`padded_vocab_size`); the
padding is dropped again on merge.

Memory: output files are streamed tensor by tensor; each tensor is merged
from its source shards when needed, so peak memory is about one full tensor
(plus its rank slice), whatever the model size.
"""
from __future__ import annotations

import bisect
import logging
import os
import re

import numpy as np

from ..config import PanGuConfig
from ..config.parallel_config import padded_vocab_size, pipeline_layer_counts
from ..io.weights import LAYOUT_FILE, rank_file_name, read_layout, variant_name, write_layout
from ..model.weight_tables import (
    POSITION_EMBEDDING,
    WORD_EMBEDDING,
    layer_index,
    merge_state_dicts,
    plain_param_shapes,
    split_state_dict,
    tensor_parallel_rules,
)
from .common import (
    DEFAULT_SHARD_BYTES,
    DTYPES,
    ConversionError,
    LazyTensor,
    check_shapes,
    load_model_dir,
    open_model_config,
    read_weight_files,
    refuse_overlap,
    save_config,
    save_model_dir,
    stream_safetensors,
)
from ..io.model_dir import seal_model_dir

logger = logging.getLogger("paddle_pangu.convert")
_VARIANT = re.compile(r"^(model|model_state)\.(tp(\d+))?_?(pp(\d+))?\.(safetensors|pdparams)$")


def stages_of(name: str, config: PanGuConfig, pp: int) -> list[int]:
    """Pipeline stages holding plain parameter `name` (the tied word embedding is on the first and last)."""
    if pp == 1:
        return [0]
    if name == WORD_EMBEDDING:
        return [0, pp - 1]
    if name == POSITION_EMBEDDING:
        return [0]
    idx = layer_index(name, config)
    if idx is None:  # final layernorm: just below the query layer
        return [pp - 1]
    bounds = np.cumsum(pipeline_layer_counts(config.num_layers, pp)).tolist()
    return [bisect.bisect_right(bounds, idx)]


def stage_names(config: PanGuConfig, pp: int, stage: int) -> list[str]:
    return [n for n in plain_param_shapes(config) if stage in stages_of(n, config, pp)]


def detect_layout(path: str) -> tuple[int, int, dict]:
    """(mp, pp, {(mp_rank, pp_stage): file}) of a checkpoint directory; (1, 1, {}) for a plain one.

    The degrees come from `checkpoint_layout.json` when present (written by
    `reshard`), else from the highest rank in the file names.
    """
    found, has_tp, has_pp = {}, False, False
    for fn in os.listdir(path):
        m = _VARIANT.match(fn)
        if m and (m.group(2) or m.group(4)):
            key = (int(m.group(3) or 0), int(m.group(5) or 0))
            if key in found:
                raise ConversionError(f"{path}: both {found[key]} and {fn} hold rank tp{key[0]:02d} pp{key[1]:02d}")
            found[key] = fn
            has_tp, has_pp = has_tp or bool(m.group(2)), has_pp or bool(m.group(4))
    if not found:
        return 1, 1, {}
    mp = max(max(k[0] for k in found) + 1, 2 if has_tp else 1)
    pp = max(max(k[1] for k in found) + 1, 2 if has_pp else 1)
    recorded = read_layout(path)
    if recorded is not None:
        mp, pp = recorded
    missing = [variant_name(t, s, mp, pp) for t in range(mp) for s in range(pp) if (t, s) not in found]
    if missing:
        raise ConversionError(f"{path}: layout mp{mp} pp{pp} is incomplete, missing rank files {missing}")
    return mp, pp, found


class ShardedCheckpoint:
    """Read access to a checkpoint in any mp/pp layout, one full (merged) tensor at a time."""

    def __init__(self, path: str):
        self.path = path
        self.mp, self.pp, files = detect_layout(path)
        if not files:
            self.config, plain = load_model_dir(path)
            self.ranks = {(0, 0): plain}
        else:
            self.config = open_model_config(path)
            self.ranks = {k: read_weight_files(path, variant=_variant_of(fn)) for k, fn in files.items()}
        self.rules = tensor_parallel_rules(self.config)
        self._check()

    def _check(self) -> None:
        """Every rank file holds exactly its stage's names with the shapes the layout implies."""
        for stage in range(self.pp):
            for t in range(self.mp):
                want = {n: v.shape for n, v in rank_tensors(self, self.mp, self.pp, t, stage).items()}
                got = self.ranks[(t, stage)]
                where = f"{self.path}: rank tp{t:02d} pp{stage:02d} of an mp{self.mp} pp{self.pp} layout"
                if set(got) != set(want):
                    raise ConversionError(f"{where} holds unexpected {sorted(set(got) - set(want))[:5]} "
                                          f"and lacks {sorted(set(want) - set(got))[:5]}")
                wrong = [f"{n}: {tuple(got[n].shape)} != {want[n]}" for n in want if tuple(got[n].shape) != want[n]]
                if wrong:
                    raise ConversionError(f"{where}: shapes do not match config.json: " + "; ".join(wrong[:5]))

    def full(self, name: str) -> np.ndarray:
        """The merged single-process tensor `name` (vocab padding removed)."""
        stage = stages_of(name, self.config, self.pp)[0]
        return merge_shards(name, [self.ranks[(t, stage)][name].load() for t in range(self.mp)], self.config,
                            self.rules)

    def lazy_full(self) -> dict[str, LazyTensor]:
        shapes = plain_param_shapes(self.config)
        dtype = next(iter(self.ranks[(0, 0)].values())).dtype
        return {n: LazyTensor(tuple(s), dtype, lambda n=n: self.full(n), self.path) for n, s in shapes.items()}


def _variant_of(fn: str) -> str:
    m = _VARIANT.match(fn)
    return "_".join(p for p in (m.group(2), m.group(4)) if p)


def merge_shards(name: str, shards: list, config: PanGuConfig, rules: dict) -> np.ndarray:
    """The single-process tensor of plain parameter `name` from its mp shards (ordered by mp rank), the
    word embedding's vocab padding dropped. Also for a tensor shaped like the parameter (an AdamW moment,
    an fp32 master weight): the resume on another layout (training/checkpoint/reshard.py) goes through here."""
    arr = merge_state_dicts([{name: s} for s in shards], rules)[name]
    if name == WORD_EMBEDDING:
        arr = arr[: config.vocab_size]
    return arr


def split_part(name: str, arr: np.ndarray, mp: int, mp_rank: int, rules: dict) -> np.ndarray:
    """Rank `mp_rank`'s part of the full tensor `arr` of plain parameter `name` in an mp layout (the word
    embedding padded with zero rows to `padded_vocab_size` first); the inverse of `merge_shards`."""
    if name == WORD_EMBEDDING and mp > 1:
        padded = padded_vocab_size(arr.shape[0], mp)
        if padded != arr.shape[0]:
            arr = np.concatenate([arr, np.zeros((padded - arr.shape[0],) + arr.shape[1:], arr.dtype)])
    return split_state_dict({name: arr}, mp, mp_rank, rules)[name]


def _rank_part(ckpt: ShardedCheckpoint, name: str, mp: int, mp_rank: int) -> np.ndarray:
    return split_part(name, ckpt.full(name), mp, mp_rank, ckpt.rules)


def rank_tensors(ckpt: ShardedCheckpoint, mp: int, pp: int, mp_rank: int, stage: int) -> dict[str, LazyTensor]:
    """Lazy tensors that rank (mp_rank, stage) of an mp x pp layout holds (local shapes)."""
    shapes = plain_param_shapes(ckpt.config)
    dtype = next(iter(ckpt.ranks[(0, 0)].values())).dtype
    out = {}
    for name in stage_names(ckpt.config, pp, stage):
        shape, axis = list(shapes[name]), ckpt.rules.get(name)
        if name == WORD_EMBEDDING and mp > 1:
            shape[0] = padded_vocab_size(shape[0], mp)
        if axis is not None and mp > 1:
            shape[axis] //= mp
        out[name] = LazyTensor(tuple(shape), dtype, lambda n=name: _rank_part(ckpt, n, mp, mp_rank), ckpt.path)
    return out


def rank_state_dict(ckpt: ShardedCheckpoint, mp: int, pp: int, mp_rank: int, stage: int) -> dict[str, np.ndarray]:
    """The tensors that rank (mp_rank, stage) of an mp x pp layout holds."""
    return {n: t.load() for n, t in rank_tensors(ckpt, mp, pp, mp_rank, stage).items()}


def _check_divisible(config: PanGuConfig, mp: int, pp: int) -> None:
    problems = [f"{field}={getattr(config, field)} is not divisible by mp={mp}"
                for field in ("num_attention_heads", "hidden_size", "ffn_hidden_size") if getattr(config, field) % mp]
    if problems:
        raise ConversionError("cannot reshard: " + "; ".join(problems))
    pipeline_layer_counts(config.num_layers, pp)  # raises ParallelConfigError with the fix


def reshard(src: str, dst: str, mp: int, pp: int, dtype: str | None = None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Rewrite checkpoint `src` (any layout) as an mp x pp layout in `dst`; returns the written files."""
    refuse_overlap(src, dst, "reshard")
    ckpt = ShardedCheckpoint(src)
    config = ckpt.config
    _check_divisible(config, mp, pp)
    dtype = dtype or str(np.dtype(next(iter(ckpt.ranks[(0, 0)].values())).dtype))
    if dtype not in DTYPES:
        raise ConversionError(f"reshard: dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    logger.info("resharding %s: mp%d pp%d -> mp%d pp%d", src, ckpt.mp, ckpt.pp, mp, pp)
    os.makedirs(dst, exist_ok=True)
    _clear_rank_files(dst)
    _copy_tokenizer(src, dst, config.vocab_size)
    if mp == 1 and pp == 1:
        return save_model_dir(dst, config, ckpt.lazy_full(), dtype, max_shard_bytes)
    config.architectures = ["PanGuForCausalLM"]
    save_config(config, dst)
    write_layout(dst, mp, pp)
    written = []
    for stage in range(pp):
        for t in range(mp):
            tensors = rank_tensors(ckpt, mp, pp, t, stage)
            fname = rank_file_name(t, stage, mp, pp)
            stream_safetensors(os.path.join(dst, fname), tensors, DTYPES[dtype], {"format": "np"})
            written.append(fname)
            logger.info("wrote %s (%d tensors)", fname, len(tensors))
    seal_model_dir(dst)
    return written


def _copy_tokenizer(src: str, dst: str, vocab_size: int) -> None:
    """The source's tokenizer files (else pcl-pangu's), so AutoTokenizer opens the output too."""
    from ..tokenizer import save_tokenizer_files, tokenizer_source

    if not save_tokenizer_files(dst, tokenizer_source(src), vocab_size):
        logger.info("no tokenizer files written to %s: vocab_size %d is smaller than the tokenizer's", dst, vocab_size)


def _clear_rank_files(dst: str) -> None:
    """Remove weight files of another layout so the destination holds exactly one."""
    for fn in os.listdir(dst):
        if fn == LAYOUT_FILE or _VARIANT.match(fn) or fn.startswith("model-") and fn.endswith(".safetensors") or fn in (
                "model.safetensors", "model.safetensors.index.json", "model_state.pdparams"):
            os.remove(os.path.join(dst, fn))


def merge_to_plain(src: str) -> tuple[PanGuConfig, dict[str, np.ndarray]]:
    """Full single-process state dict of any layout (for tests and small models)."""
    ckpt = ShardedCheckpoint(src)
    state = {n: ckpt.full(n) for n in plain_param_shapes(ckpt.config)}
    check_shapes({k: v.shape for k, v in state.items()}, ckpt.config, src)
    return ckpt.config, state


__all__ = ["reshard", "merge_to_plain", "merge_shards", "split_part", "rank_file_name", "write_layout", "rank_state_dict", "rank_tensors", "stages_of", "stage_names", "detect_layout",
           "ShardedCheckpoint", "variant_name"]
