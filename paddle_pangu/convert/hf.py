"""HuggingFace-style `gpt_pangu` checkpoints: import (bin or safetensors) and export (safetensors).

REF "Checkpoint formats", HF port: `transformer.{wte,wpe,wqe}`,
`transformer.h.{i}` with `h.{L-1}` the query layer, `transformer.ln_f`
applied before it, torch `nn.Linear` weights [out, in], `lm_head.weight`
a tied copy of `wte`. safetensors files are read and written without torch;
`pytorch_model.bin` needs torch (optional extra).
"""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from ..model.weight_tables import HF_IGNORE, HF_LM_HEAD, WORD_EMBEDDING, hf_name_map
from ..io.weights import read_weight_map
from ..utils.json_file import read_json
from .common import ConversionError, LazyTensor, count_blocks, iter_safetensors, torch_to_numpy_dtype

logger = logging.getLogger("paddle_pangu.convert")
BLOCK_PATTERN = re.compile(r"^transformer\.h\.(\d+)\.")
IGNORE = HF_IGNORE
ALIASES: dict[str, str] = {}
name_map = hf_name_map

# our hidden_act <-> HF ACT2FN names. "gelu_new" is the tanh approximation, "quick_gelu" x*sigmoid(1.702x).
HF_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "fast_gelu": "quick_gelu"}
FROM_HF_ACTIVATION = {"gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "quick_gelu": "fast_gelu"}


def _weight_files(src: str) -> tuple[list[str], str]:
    """(files, kind) with kind 'safetensors' or 'bin'; safetensors preferred."""
    if os.path.isfile(src):
        return [src], "safetensors" if src.endswith(".safetensors") else "bin"
    if not os.path.isdir(src):
        raise ConversionError(f"{src}: no such file or directory")
    for index, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        path = os.path.join(src, index)
        if os.path.exists(path):
            return [os.path.join(src, n) for n in sorted(set(read_weight_map(path, ConversionError).values()))], kind
    for name, kind in (("model.safetensors", "safetensors"), ("pytorch_model.bin", "bin")):
        if os.path.exists(os.path.join(src, name)):
            return [os.path.join(src, name)], kind
    raise ConversionError(f"{src}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def _read_bin(files: list[str]) -> dict[str, LazyTensor]:
    try:
        import torch
    except ImportError:
        raise ConversionError("reading pytorch_model.bin needs torch (pip install 'paddle_pangu[torch]'); "
                              "safetensors checkpoints need no torch") from None
    import pickle

    out = {}
    for fn in files:
        try:
            try:
                sd = torch.load(fn, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # legacy (non-zip) files cannot be mmapped
                if "mmap" not in str(exc):
                    raise
                sd = torch.load(fn, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ConversionError(f"{fn}: not a plain tensor state dict ({str(exc).splitlines()[0][:160]})") from None
        for k, t in sd.items():
            def load(t=t):
                t = t.detach()
                return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

            out[k] = LazyTensor(tuple(t.shape), torch_to_numpy_dtype(t.dtype), load, fn)
    return out


def read_hf(src: str) -> tuple[dict[str, LazyTensor], dict]:
    """Foreign tensors and config hints (heads, activation, eps) of a gpt_pangu checkpoint."""
    files, kind = _weight_files(src)
    tensors = iter_safetensors(files) if kind == "safetensors" else _read_bin(files)
    if not any(k.startswith("transformer.") for k in tensors):  # saved from the base GPTPanguModel
        tensors = {(k if k == HF_LM_HEAD else f"transformer.{k}"): v for k, v in tensors.items()}
    head = tensors.pop(HF_LM_HEAD, None)
    if head is not None:
        _check_tied(head, tensors.get("transformer.wte.weight"))
    config_path = os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "config.json")
    return tensors, _hints(config_path)


def _check_tied(head: LazyTensor, wte: LazyTensor | None) -> None:
    """PanGu ties the LM head to the word embedding (REF "output head"); an untied head cannot be kept."""
    if wte is None or tuple(head.shape) != tuple(wte.shape):
        return  # a missing / mis-shaped wte is reported by the name and shape checks
    diff = float(np.max(np.abs(head.load().astype(np.float32) - wte.load().astype(np.float32))))
    if diff > 1e-6:
        raise ConversionError(f"{head.source}: lm_head.weight differs from transformer.wte.weight (max |diff| "
                              f"{diff:.3g}); PanGu-alpha ties them and an untied head cannot be converted")


def _hints(config_path: str) -> dict:
    if not os.path.exists(config_path):
        return {}
    cfg = read_json(config_path, "an HF config.json", ConversionError)
    hints = {}
    if cfg.get("num_heads") or cfg.get("n_head"):
        hints["num_attention_heads"] = int(cfg.get("num_heads") or cfg.get("n_head"))
    if "layer_norm_epsilon" in cfg:
        hints["layer_norm_eps"] = float(cfg["layer_norm_epsilon"])
    act = cfg.get("pangu_hidden_act") or FROM_HF_ACTIVATION.get(cfg.get("activation_function", ""))
    if act:
        # plain "gelu" (the port's default) is not mapped: released weights follow REF (gelu_tanh)
        hints["hidden_act"] = act
    return hints


def num_layers_from_names(names) -> int:
    """HF counts the query layer among `h.{i}` (REF)."""
    return count_blocks(names, BLOCK_PATTERN)


def hf_config_dict(config) -> dict:
    """config.json of the exported gpt_pangu model."""
    return {
        "architectures": ["GPTPanguForCausalLM"],
        "model_type": "gpt_pangu",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_attention_heads,
        "intermediate_size": config.ffn_hidden_size,
        "max_position_embeddings": config.max_position_embeddings,
        "activation_function": HF_ACTIVATIONS[config.hidden_act],
        "pangu_hidden_act": config.hidden_act,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "embd_pdrop": config.hidden_dropout_prob,
        "attn_pdrop": config.attention_probs_dropout_prob,
        "resid_pdrop": config.hidden_dropout_prob,
        "scale_attn_weights": True,
        "use_cache": True,
        "tie_word_embeddings": True,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": "float32",
    }


def export_hf(model_dir: str, out_dir: str, dtype: str = "float32", max_shard_bytes: int | None = None) -> list[str]:
    """Write a checkpoint of this project (any mp/pp layout) as gpt_pangu safetensors + config.json, streamed."""
    from ..io.durable import atomic_write_text
    from ..io.model_dir import seal_model_dir
    from .common import DEFAULT_SHARD_BYTES, refuse_overlap, write_safetensors
    from .reshard import ShardedCheckpoint

    refuse_overlap(model_dir, out_dir, "convert --to hf")
    ckpt = ShardedCheckpoint(model_dir)  # checks names and shapes against config.json
    config, plain = ckpt.config, ckpt.lazy_full()
    tensors = {}
    for rule in hf_name_map(config):
        src = plain[rule.plain]
        tensors[rule.foreign] = _transposed(src) if rule.transpose else src
    tensors[HF_LM_HEAD] = plain[WORD_EMBEDDING]  # tied copy for loaders that do not tie
    os.makedirs(out_dir, exist_ok=True)
    cfg = hf_config_dict(config)
    cfg["torch_dtype"] = dtype
    atomic_write_text(os.path.join(out_dir, "config.json"), json.dumps(cfg, indent=2))  # replaces a planted link
    files = write_safetensors(out_dir, tensors, dtype, max_shard_bytes or DEFAULT_SHARD_BYTES, metadata_format="pt")
    seal_model_dir(out_dir)
    return files


def _transposed(t: LazyTensor) -> LazyTensor:
    return LazyTensor(tuple(reversed(t.shape)), t.dtype, lambda: np.ascontiguousarray(t.load().T), t.source)
