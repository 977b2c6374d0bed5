"""Megatron (PyTorch) PanGu-alpha checkpoints: nested `model` / `language_model` state dicts.

Layout (REF "Checkpoint formats", Megatron; the PCL port in `pcl_pangu`):
`sd["model"]["language_model"]` holds `embedding.{word,position}_embeddings`,
`topQueryEmbedding.top_query_embeddings` and a flat `transformer` dict
(`layers.{i}.*`, `topQueryLayer.*`, `final_layernorm.*`). Files are
`mp_rank_XX/model_optim_rng.pt` under `iter_XXXXXXX/` or `release/`; the
tensor-parallel shards are concatenated along the axis given by
`NameRule.foreign_split_axis` of `megatron_name_map`. fp16 tensors are
upcast by the common writer. torch is needed to read these files (optional
extra `paddle_pangu[torch]`); files are opened with mmap where torch allows.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re

import numpy as np

from ..model.weight_tables import megatron_name_map
from .common import ConversionError, LayerCount, LazyTensor, count_blocks, torch_to_numpy_dtype

logger = logging.getLogger("paddle_pangu.convert")
BLOCK_PATTERN = re.compile(r"^transformer\.layers\.(\d+)\.")
IGNORE = None
name_map = megatron_name_map
ALIASES: dict[str, str] = {}


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError("reading Megatron .pt files needs torch: pip install 'paddle_pangu[torch]' "
                              "(torch==2.13.0, CPU build is enough)") from None
    return torch


def find_shard_files(src: str) -> list[str]:
    """The mp_rank_XX files of one Megatron checkpoint, ordered by rank."""
    if os.path.isfile(src):
        return [src]
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: no such file or directory")
    tracker = os.path.join(src, "latest_checkpointed_iteration.txt")
    if os.path.exists(tracker):
        with open(tracker, encoding="utf-8") as f:
            it = f.read().strip()
        src = os.path.join(src, "release" if it == "release" else f"iter_{int(it):07d}")
    ranks = sorted(glob.glob(os.path.join(src, "mp_rank_*")))
    if not ranks:
        files = sorted(glob.glob(os.path.join(src, "*.pt")))
        if len(files) == 1:
            return files
        raise ConversionError(f"{src}: expected mp_rank_XX/ sub-directories, one .pt file, "
                              "or latest_checkpointed_iteration.txt")
    out = []
    for r in ranks:
        pts = [r] if os.path.isfile(r) else sorted(glob.glob(os.path.join(r, "*.pt")))
        if len(pts) != 1:
            raise ConversionError(f"{r}: expected exactly one .pt file, found {len(pts)}")
        out += pts
    if any("_pp_rank" in p or re.search(r"mp_rank_\d+_\d+", p) for p in out):
        raise ConversionError(f"{src}: pipeline-parallel Megatron checkpoints are not supported; "
                              "merge the pipeline stages with Megatron's tools first")
    return out


def _load(path: str, trust_pickle: bool) -> dict:
    """torch.load with mmap; only tensors, dicts and argparse.Namespace unless `trust_pickle`."""
    torch = _torch()
    import pickle

    def load(**kw):
        try:
            return torch.load(path, map_location="cpu", mmap=True, **kw)
        except RuntimeError as exc:  # legacy (non-zip) serialization cannot be mmapped
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", **kw)

    if trust_pickle:
        return load(weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return load(weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(f"{path}: holds Python objects besides tensors ({str(exc).splitlines()[0][:160]}); "
                              "if you trust this file, rerun with --trust-pickle") from None


def _language_model(sd: dict, path: str) -> dict:
    for keys in (("model", "language_model"), ("language_model",), ("model", "module", "language_model"),
                 ("module", "language_model")):
        node = sd
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    raise ConversionError(f"{path}: no model/language_model dict; top-level keys are {sorted(sd)[:10]}")


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


def _to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


def read_megatron(src: str, trust_pickle: bool = False) -> tuple[dict[str, LazyTensor], dict]:
    """Foreign tensors (tensor-parallel shards merged) and config hints of a Megatron checkpoint."""
    files = find_shard_files(src)
    shards, hints = [], {}
    for path in files:
        sd = _load(path, trust_pickle)
        args = sd.get("args")
        if args is not None and getattr(args, "num_attention_heads", None):
            hints["num_attention_heads"] = int(args.num_attention_heads)
        shards.append(_flatten(_language_model(sd, path)))
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], 1):
        if set(shard) != set(names):
            raise ConversionError(f"{files[rank]}: tensor names differ from {files[0]}: "
                                  f"{sorted(set(shard) ^ set(names))[:5]}")
    num_layers = count_blocks(names, BLOCK_PATTERN) + 1  # REF: Megatron layers exclude the query layer
    axes = {r.foreign: r.foreign_split_axis for r in megatron_name_map(LayerCount(num_layers))}
    if len(files) > 1:
        logger.info("merging %d Megatron tensor-parallel shards", len(files))
    return {n: _merged(n, [s[n] for s in shards], axes.get(n), files[0]) for n in names}, hints


def _merged(name: str, parts: list, axis: int | None, source: str) -> LazyTensor:
    shape = list(parts[0].shape)
    if axis is not None and len(parts) > 1:
        if any(len(p.shape) <= axis for p in parts):
            raise ConversionError(f"{source}: {name} has shape {shape}; cannot concatenate shards on axis {axis}")
        shape[axis] = sum(int(p.shape[axis]) for p in parts)

    def load():
        if axis is None or len(parts) == 1:
            return _to_numpy(parts[0])
        return np.concatenate([_to_numpy(p) for p in parts], axis=axis)

    return LazyTensor(tuple(shape), torch_to_numpy_dtype(parts[0].dtype), load, source)



def num_layers_from_names(names) -> int:
    return count_blocks(names, BLOCK_PATTERN) + 1
