"""Weight tables: one place that says how every PanGu parameter is split or named.

Sections:
  * tensor-parallel split rules (`tensor_parallel_rules`, `split_state_dict`,
    `merge_state_dicts`) - used by the parallel model loader, the resharder
    and the tests;
  * foreign-format name maps (MindSpore / Megatron / HF) - further below,
    each in its own function.

Parameter names are those of the plain `PanGuForCausalLM` state dict.
Paddle `nn.Linear` weights are [in, out].
"""
from __future__ import annotations

import re

import numpy as np

# ============================================================================
# Tensor-parallel split rules
# ============================================================================

# Sub-module -> kind. Column-parallel linears split their output features,
# row-parallel linears their input features (fleet's Megatron-style layout);
# the word embedding is vocab-parallel (rows). REF "attention"/"FFN": Q, K, V
# and `mapping` (fc_in) are column, attention-out and `projection` (fc_out)
# are row.
_COLUMN = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc_in")
_ROW = ("attention.out_proj", "mlp.fc_out")
_LAYER_PREFIX = r"pangu\.(?:layers\.\d+|query_layer)\."


def split_axis_for(name: str) -> int | None:
    """Axis along which tensor-parallel ranks split `name`, or None (replicated).

    column linear: weight [in, out] -> axis 1, bias [out] -> axis 0;
    row linear:    weight [in, out] -> axis 0, bias replicated (added after the all-reduce);
    word embedding [V, H] -> axis 0 (vocab-parallel).
    """
    if name == "pangu.embeddings.word_embeddings.weight":
        return 0
    for sub in _COLUMN:
        if re.fullmatch(_LAYER_PREFIX + re.escape(sub) + r"\.weight", name):
            return 1
        if re.fullmatch(_LAYER_PREFIX + re.escape(sub) + r"\.bias", name):
            return 0
    for sub in _ROW:
        if re.fullmatch(_LAYER_PREFIX + re.escape(sub) + r"\.weight", name):
            return 0
    return None


def plain_parameter_names(config) -> list[str]:
    """Every parameter name of the plain PanGuForCausalLM, in model order (contract)."""
    sub = []
    for ln in ("input_layernorm", "post_attention_layernorm"):
        sub += [f"{ln}.weight", f"{ln}.bias"]
    for lin in ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.out_proj", "mlp.fc_in", "mlp.fc_out"):
        sub += [f"{lin}.weight", f"{lin}.bias"]
    names = ["pangu.embeddings.word_embeddings.weight", "pangu.embeddings.position_embeddings.weight"]
    for i in range(config.num_layers - 1):
        names += [f"pangu.layers.{i}.{s}" for s in sub]
    names += ["pangu.final_layernorm.weight", "pangu.final_layernorm.bias"]
    names += ["pangu.query_layer.top_query_embedding.weight"] + [f"pangu.query_layer.{s}" for s in sub]
    return names


def tensor_parallel_rules(config) -> dict[str, int | None]:
    """{plain parameter name: split axis or None} for every parameter of `config`'s model."""
    return {name: split_axis_for(name) for name in plain_parameter_names(config)}


def _as_numpy(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def split_state_dict(state_dict: dict, mp_degree: int, mp_rank: int, rules: dict | None = None) -> dict:
    """The shard of a plain (single-process) state dict that tensor-parallel rank `mp_rank` holds.

    Values may be numpy arrays or paddle tensors; the result holds numpy
    arrays. Names not in `rules` fall back to `split_axis_for`. Raises
    ValueError naming the parameter when a split dimension is not divisible.
    """
    if not 0 <= mp_rank < mp_degree:
        raise ValueError(f"mp_rank={mp_rank} out of range for mp_degree={mp_degree}")
    out = {}
    for name, value in state_dict.items():
        arr = _as_numpy(value)
        axis = rules.get(name, split_axis_for(name)) if rules is not None else split_axis_for(name)
        if axis is None or mp_degree == 1:
            out[name] = arr
            continue
        if arr.shape[axis] % mp_degree:
            raise ValueError(
                f"{name}: dimension {axis} of shape {list(arr.shape)} is not divisible by mp_degree={mp_degree}"
            )
        out[name] = np.split(arr, mp_degree, axis=axis)[mp_rank]
    return out


def merge_state_dicts(shards: list[dict], rules: dict | None = None) -> dict:
    """Inverse of `split_state_dict`: concatenate per-rank shards (ordered by mp rank).

    Replicated parameters are taken from rank 0. Raises ValueError when the
    shards do not hold the same names.
    """
    if not shards:
        raise ValueError("merge_state_dicts: no shards given")
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            diff = sorted(set(shard) ^ set(names))
            raise ValueError(f"merge_state_dicts: shard {rank} names differ from shard 0: {diff[:5]}")
    out = {}
    for name in names:
        axis = rules.get(name, split_axis_for(name)) if rules is not None else split_axis_for(name)
        arrays = [_as_numpy(s[name]) for s in shards]
        out[name] = arrays[0] if axis is None or len(shards) == 1 else np.concatenate(arrays, axis=axis)
    return out


# ============================================================================
# Foreign-format name maps (helper D)
# ============================================================================
