"""Weight tables: every name, layout and split rule of PanGu-alpha checkpoints in one place.

Two sections, used by the converters (`paddle_pangu.convert`), the resharder,
the parallel model and the tests:

1. Foreign-format name maps (MindSpore / Megatron / HF `gpt_pangu`) and the
   plain parameter shapes. Each map is a declarative list of `NameRule`
   (plain name, foreign name, transpose flag, foreign tensor-parallel axis).
2. The tensor-parallel table of this project's parameters (split axis or
   replicated per parameter) with `split_state_dict` / `merge_state_dicts`.

"Plain" names are the state-dict keys of `PanGuForCausalLM` (one process).
Paddle `nn.Linear` stores weights [in, out]; torch / MindSpore `Dense` store
[out, in] (REF = docs/REFERENCE.md, "Checkpoint formats").
"""
from __future__ import annotations

import re
from typing import NamedTuple

# =============================================================================
# Section 1: foreign-format name maps
# =============================================================================

WORD_EMBEDDING = "pangu.embeddings.word_embeddings.weight"
POSITION_EMBEDDING = "pangu.embeddings.position_embeddings.weight"
TOP_QUERY_EMBEDDING = "pangu.query_layer.top_query_embedding.weight"
FINAL_LN_WEIGHT = "pangu.final_layernorm.weight"
FINAL_LN_BIAS = "pangu.final_layernorm.bias"
QUERY_LAYER_PREFIX = "pangu.query_layer."


class NameRule(NamedTuple):
    """One parameter: plain name <-> foreign name.

    transpose: the foreign matrix is stored [out, in] and must be transposed
        to Paddle's [in, out] (and back on export).
    foreign_split_axis: for formats that ship their own tensor-parallel shards
        (Megatron `mp_rank_XX`), the axis of the *foreign* tensor along which
        the shards are concatenated; None = replicated on every shard.
    """

    plain: str
    foreign: str
    transpose: bool = False
    foreign_split_axis: int | None = None


def block_prefix(i: int) -> str:
    """Plain prefix of ordinary block `i` (0 .. num_layers-2)."""
    return f"pangu.layers.{i}."


# per-block tables: (plain suffix, foreign suffix, transpose[, foreign split axis])
# MindSpore: dense1/2/3 (Q, K, V) are [out, in]; projection / mapping are [in, out] (REF).
MINDSPORE_LAYER = (
    ("input_layernorm.weight", "layernorm1.gamma", False),
    ("input_layernorm.bias", "layernorm1.beta", False),
    ("attention.q_proj.weight", "attention.dense1.weight", True),
    ("attention.q_proj.bias", "attention.dense1.bias", False),
    ("attention.k_proj.weight", "attention.dense2.weight", True),
    ("attention.k_proj.bias", "attention.dense2.bias", False),
    ("attention.v_proj.weight", "attention.dense3.weight", True),
    ("attention.v_proj.bias", "attention.dense3.bias", False),
    ("attention.out_proj.weight", "attention.projection.weight", False),
    ("attention.out_proj.bias", "attention.projection.bias", False),
    ("post_attention_layernorm.weight", "layernorm2.gamma", False),
    ("post_attention_layernorm.bias", "layernorm2.beta", False),
    ("mlp.fc_in.weight", "output.mapping.weight", False),
    ("mlp.fc_in.bias", "output.mapping.bias", False),
    ("mlp.fc_out.weight", "output.projection.weight", False),
    ("mlp.fc_out.bias", "output.projection.bias", False),
)

# Megatron (torch Linear [out, in]); column-parallel split axis 0, row-parallel axis 1.
MEGATRON_LAYER = (
    ("input_layernorm.weight", "input_layernorm.weight", False, None),
    ("input_layernorm.bias", "input_layernorm.bias", False, None),
    ("attention.q_proj.weight", "attention.query.weight", True, 0),
    ("attention.q_proj.bias", "attention.query.bias", False, 0),
    ("attention.k_proj.weight", "attention.key.weight", True, 0),
    ("attention.k_proj.bias", "attention.key.bias", False, 0),
    ("attention.v_proj.weight", "attention.value.weight", True, 0),
    ("attention.v_proj.bias", "attention.value.bias", False, 0),
    ("attention.out_proj.weight", "attention.dense.weight", True, 1),
    ("attention.out_proj.bias", "attention.dense.bias", False, None),
    ("post_attention_layernorm.weight", "post_attention_layernorm.weight", False, None),
    ("post_attention_layernorm.bias", "post_attention_layernorm.bias", False, None),
    ("mlp.fc_in.weight", "mlp.dense_h_to_4h.weight", True, 0),
    ("mlp.fc_in.bias", "mlp.dense_h_to_4h.bias", False, 0),
    ("mlp.fc_out.weight", "mlp.dense_4h_to_h.weight", True, 1),
    ("mlp.fc_out.bias", "mlp.dense_4h_to_h.bias", False, None),
)

# HF gpt_pangu (torch nn.Linear [out, in]).
HF_LAYER = (
    ("input_layernorm.weight", "ln_1.weight", False),
    ("input_layernorm.bias", "ln_1.bias", False),
    ("attention.q_proj.weight", "attn.q_proj.weight", True),
    ("attention.q_proj.bias", "attn.q_proj.bias", False),
    ("attention.k_proj.weight", "attn.k_proj.weight", True),
    ("attention.k_proj.bias", "attn.k_proj.bias", False),
    ("attention.v_proj.weight", "attn.v_proj.weight", True),
    ("attention.v_proj.bias", "attn.v_proj.bias", False),
    ("attention.out_proj.weight", "attn.c_proj.weight", True),
    ("attention.out_proj.bias", "attn.c_proj.bias", False),
    ("post_attention_layernorm.weight", "ln_2.weight", False),
    ("post_attention_layernorm.bias", "ln_2.bias", False),
    ("mlp.fc_in.weight", "mlp.c_fc.weight", True),
    ("mlp.fc_in.bias", "mlp.c_fc.bias", False),
    ("mlp.fc_out.weight", "mlp.c_proj.weight", True),
    ("mlp.fc_out.bias", "mlp.c_proj.bias", False),
)


def _layer_rules(table, plain_prefix: str, foreign_prefix: str) -> list[NameRule]:
    return [NameRule(plain_prefix + row[0], foreign_prefix + row[1], *row[2:]) for row in table]


def _stack_rules(config, table, block_fmt: str, query_prefix: str) -> list[NameRule]:
    rules: list[NameRule] = []
    for i in range(config.num_blocks):
        rules += _layer_rules(table, block_prefix(i), block_fmt.format(i=i))
    return rules + _layer_rules(table, QUERY_LAYER_PREFIX, query_prefix)


def mindspore_name_map(config) -> list[NameRule]:
    """Released MindSpore `.ckpt` names (REF "Checkpoint formats", MindSpore)."""
    rules = [
        NameRule(WORD_EMBEDDING, "backbone.word_embedding.embedding_table"),
        NameRule(POSITION_EMBEDDING, "backbone.position_embedding.embedding_table"),
        NameRule(TOP_QUERY_EMBEDDING, "backbone.top_query_embedding.embedding_table"),
    ]
    rules += _stack_rules(config, MINDSPORE_LAYER, "backbone.blocks.{i}.", "backbone.top_query_layer.")
    # REF: backbone.layernorm is the final LN, applied before the query layer
    return rules + [NameRule(FINAL_LN_WEIGHT, "backbone.layernorm.gamma"), NameRule(FINAL_LN_BIAS, "backbone.layernorm.beta")]


# Other spellings of the same MindSpore tensor -> the name used in `mindspore_name_map`.
MINDSPORE_ALIASES = {
    # newer MindSpore model-zoo code (REF: "newer MindSpore code renames the embeddings")
    "backbone.embedding.word_embedding.embedding_table": "backbone.word_embedding.embedding_table",
    "backbone.embedding.position_embedding.embedding_table": "backbone.position_embedding.embedding_table",
    "backbone.embedding.top_query_embedding.embedding_table": "backbone.top_query_embedding.embedding_table",
    # separate .npy tables shipped next to the 512-shard releases (pcl_pangu inference code)
    "word_embedding": "backbone.word_embedding.embedding_table",
    "position_embedding": "backbone.position_embedding.embedding_table",
    "top_query_embedding": "backbone.top_query_embedding.embedding_table",
}

# Non-model entries of MindSpore training checkpoints: optimizer moments, loss scale, step counters.
MINDSPORE_IGNORE = re.compile(
    r"^(adam_m\.|adam_v\.|moments\.|accu_grads\.|global_step$|scale_sense$|learning_rate$|"
    r"current_iterator_step$|last_overflow_iterator_step$|epoch_num$|step_num$|loss_scale)"
)


def megatron_name_map(config) -> list[NameRule]:
    """Megatron port names, relative to the `language_model` dict, flattened with '.'.

    REF: Megatron counts layers without the query layer (2.6B: 31), so
    `transformer.layers.{i}` are exactly our `num_blocks` ordinary blocks.
    """
    rules = [
        # vocab-parallel (axis 0); Megatron pads the vocabulary, see convert/megatron.py
        NameRule(WORD_EMBEDDING, "embedding.word_embeddings.weight", False, 0),
        NameRule(POSITION_EMBEDDING, "embedding.position_embeddings.weight"),
        NameRule(TOP_QUERY_EMBEDDING, "topQueryEmbedding.top_query_embeddings.weight"),
    ]
    rules += _stack_rules(config, MEGATRON_LAYER, "transformer.layers.{i}.", "transformer.topQueryLayer.")
    return rules + [
        NameRule(FINAL_LN_WEIGHT, "transformer.final_layernorm.weight"),
        NameRule(FINAL_LN_BIAS, "transformer.final_layernorm.bias"),
    ]


def hf_name_map(config) -> list[NameRule]:
    """HF `gpt_pangu` names: `h.{L-1}` is the query layer, `ln_f` sits before it (REF)."""
    rules = [
        NameRule(WORD_EMBEDDING, "transformer.wte.weight"),
        NameRule(POSITION_EMBEDDING, "transformer.wpe.weight"),
        NameRule(TOP_QUERY_EMBEDDING, "transformer.wqe.weight"),
    ]
    rules += _stack_rules(config, HF_LAYER, "transformer.h.{i}.", f"transformer.h.{config.num_layers - 1}.")
    return rules + [NameRule(FINAL_LN_WEIGHT, "transformer.ln_f.weight"), NameRule(FINAL_LN_BIAS, "transformer.ln_f.bias")]


HF_LM_HEAD = "lm_head.weight"  # a copy of wte (tied, REF "output head"); checked, not stored
# Non-parameter buffers the HF port may keep in its state dict (causal mask, masked bias).
HF_IGNORE = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")


def plain_param_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every plain parameter of `PanGuForCausalLM(config)` with its shape (Paddle [in, out] layout)."""
    h, f, s, v = config.hidden_size, config.ffn_hidden_size, config.max_position_embeddings, config.vocab_size
    layer = {"input_layernorm.weight": (h,), "input_layernorm.bias": (h,)}  # model (state-dict) order
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer[f"attention.{proj}.weight"] = (h, h)
        layer[f"attention.{proj}.bias"] = (h,)
    layer.update({
        "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
        "mlp.fc_in.weight": (h, f), "mlp.fc_in.bias": (f,),
        "mlp.fc_out.weight": (f, h), "mlp.fc_out.bias": (h,),
    })
    shapes = {WORD_EMBEDDING: (v, h), POSITION_EMBEDDING: (s, h)}
    for i in range(config.num_blocks):
        shapes.update({block_prefix(i) + k: shp for k, shp in layer.items()})
    shapes.update({FINAL_LN_WEIGHT: (h,), FINAL_LN_BIAS: (h,)})
    shapes.update({QUERY_LAYER_PREFIX + k: shp for k, shp in layer.items()})
    shapes[TOP_QUERY_EMBEDDING] = (s, h)
    return shapes


def plain_parameter_names(config) -> list[str]:
    """Every parameter name of the plain PanGuForCausalLM (the contract), in model order."""
    return list(plain_param_shapes(config))


def layer_index(plain_name: str, config) -> int | None:
    """Transformer-layer index of a plain name (blocks 0..L-2, query layer L-1); None for embeddings / final LN."""
    m = re.match(r"pangu\.layers\.(\d+)\.", plain_name)
    if m:
        return int(m.group(1))
    if plain_name.startswith(QUERY_LAYER_PREFIX):
        return config.num_layers - 1
    return None


# =============================================================================
# Section 2: tensor-parallel table of this project's parameters
# =============================================================================
# Column-parallel linears split their output features, row-parallel linears
# their input features (fleet's Megatron-style layout); the word embedding is
# vocab-parallel (rows). REF "attention" / "FFN": Q, K, V and `mapping`
# (fc_in) are column, attention-out and `projection` (fc_out) are row.
_TP_COLUMN = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc_in")
_TP_ROW = ("attention.out_proj", "mlp.fc_out")
_TP_LAYER = r"pangu\.(?:layers\.\d+|query_layer)\."


def split_axis_for(name: str) -> int | None:
    """Axis along which tensor-parallel ranks split plain parameter `name`, or None (replicated).

    column linear: weight [in, out] -> axis 1, bias [out] -> axis 0;
    row linear:    weight [in, out] -> axis 0, bias replicated (added after the all-reduce);
    word embedding [V, H] -> axis 0 (vocab-parallel).
    """
    if name == WORD_EMBEDDING:
        return 0
    for sub in _TP_COLUMN:
        if re.fullmatch(_TP_LAYER + re.escape(sub) + r"\.weight", name):
            return 1
        if re.fullmatch(_TP_LAYER + re.escape(sub) + r"\.bias", name):
            return 0
    for sub in _TP_ROW:
        if re.fullmatch(_TP_LAYER + re.escape(sub) + r"\.weight", name):
            return 0
    return None


def tensor_parallel_rules(config) -> dict[str, int | None]:
    """{plain parameter name: split axis or None} for every parameter of `config`'s model."""
    return {name: split_axis_for(name) for name in plain_param_shapes(config)}


def _as_numpy(value):
    import numpy as np

    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _axis(name: str, rules: dict | None) -> int | None:
    return rules[name] if rules is not None and name in rules else split_axis_for(name)


def split_state_dict(state_dict: dict, mp_degree: int, mp_rank: int, rules: dict | None = None) -> dict:
    """The shard of a plain (single-process) state dict that tensor-parallel rank `mp_rank` holds.

    Values may be numpy arrays or paddle tensors; the result holds numpy
    arrays. Names missing from `rules` fall back to `split_axis_for`. Raises
    ValueError naming the parameter when a split dimension is not divisible.
    """
    if not 0 <= mp_rank < mp_degree:
        raise ValueError(f"mp_rank={mp_rank} out of range for mp_degree={mp_degree}")
    out = {}
    for name, value in state_dict.items():
        arr = _as_numpy(value)
        out[name] = arr[shard_index(name, arr.shape, mp_degree, mp_rank, rules)]
    return out


def shard_index(name: str, shape, mp_degree: int, mp_rank: int, rules: dict | None = None) -> tuple:
    """The index (a tuple of slices) of rank `mp_rank`'s part of plain parameter `name` of `shape`: the
    `mp_rank`-th of `mp_degree` equal contiguous blocks along its split axis, everything when replicated.
    `split_state_dict` applies it to arrays; `inference.tensor_parallel` to a safetensors slice, so a rank
    reads only its part of a full checkpoint. Raises ValueError when the split dimension is not divisible."""
    if not 0 <= mp_rank < mp_degree:
        raise ValueError(f"mp_rank={mp_rank} out of range for mp_degree={mp_degree}")
    axis = _axis(name, rules)
    index = [slice(None)] * len(shape)
    if axis is None or mp_degree == 1:
        return tuple(index)
    if shape[axis] % mp_degree:
        raise ValueError(f"{name}: dimension {axis} of shape {list(shape)} is not divisible by mp_degree={mp_degree}")
    part = shape[axis] // mp_degree
    index[axis] = slice(mp_rank * part, (mp_rank + 1) * part)
    return tuple(index)


def merge_state_dicts(shards: list[dict], rules: dict | None = None) -> dict:
    """Inverse of `split_state_dict`: concatenate per-rank shards (ordered by mp rank).

    Replicated parameters are taken from rank 0. Raises ValueError when the
    shards do not hold the same names.
    """
    import numpy as np

    if not shards:
        raise ValueError("merge_state_dicts: no shards given")
    names = list(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            diff = sorted(set(shard) ^ set(names))
            raise ValueError(f"merge_state_dicts: shard {rank} names differ from shard 0: {diff[:5]}")
    out = {}
    for name in names:
        axis, arrays = _axis(name, rules), [_as_numpy(s[name]) for s in shards]
        out[name] = arrays[0] if axis is None or len(shards) == 1 else np.concatenate(arrays, axis=axis)
    return out
