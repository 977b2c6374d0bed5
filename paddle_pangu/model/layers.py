"""PanGu-alpha building blocks: the model math, written once.

Every PanGu-specific choice cites docs/REFERENCE.md ("REF").
Splittable layers come from `paddle_pangu.parallel.layers`, built for the
`ParallelContext` each layer receives (default: plain), so the same code runs
plain (one process) or tensor-parallel under fleet. Each operation is
stated once through `ops` (`ops.py` decides where it runs: fused CPU kernel,
Paddle op or the Ascend flash attention op).

Shapes: B batch, S new tokens, T = past + S keys, H hidden, nh heads
(local to this tensor-parallel rank), hd head dim, F ffn width.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import PanGuConfig
from ..parallel import layers as pl
from ..parallel.context import PLAIN, ParallelContext
from . import ops
from .ops import ATTENTION_IMPLS

MASK_VALUE = -10000.0  # REF "attention": additive mask -10000


class Dropout(nn.Dropout):
    """nn.Dropout that adds no op outside training. At inference dropout is the identity, yet nn.Dropout
    still runs an op: three per layer (attention probabilities, both residual branches) plus the
    embeddings' at every decode step, and in the graphs exported for Paddle Inference. Training calls
    nn.Dropout unchanged (the same masks from the same RNG)."""

    def forward(self, x):
        return super().forward(x) if self.training else x


def normal_attr(std: float) -> paddle.ParamAttr:
    return paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=std))


def output_std(config: PanGuConfig) -> float:
    """REF "init": attention-out and FFN-out use N(0, 0.02 / sqrt(2L))."""
    return config.initializer_range / math.sqrt(2.0 * config.num_layers)


def activation(name: str):
    """REF "activation": gelu_tanh (released checkpoints), gelu (HF port), fast_gelu (newer MindSpore)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: F.gelu(x, approximate=False)
    if name == "fast_gelu":
        return lambda x: x * F.sigmoid(1.702 * x)
    raise ValueError(f"unknown hidden_act {name!r}")


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activation dtype (REF "layernorm"). Its shape and epsilon are
    kept as public attributes (`shape`, `eps`) for the fused kernels, not read from nn.LayerNorm's privates."""

    def __init__(self, normalized_shape: int, epsilon: float = 1e-5, **kw):
        super().__init__(normalized_shape, epsilon=epsilon, **kw)
        self.shape, self.eps = [int(normalized_shape)], float(epsilon)

    def forward(self, x):
        dtype = x.dtype
        w = self.weight.astype("float32") if self.weight is not None else None
        b = self.bias.astype("float32") if self.bias is not None else None
        return ops.layer_norm(x.astype("float32"), self.shape, w, b, self.eps).astype(dtype)


class PanGuEmbeddings(nn.Layer):
    """word + learned absolute position embedding, then dropout (REF "embeddings")."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        std = config.initializer_range
        self.word_embeddings = pl.vocab_embedding(parallel, config.vocab_size, config.hidden_size,
                                                  weight_attr=normal_attr(std))
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, weight_attr=normal_attr(std)
        )
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, position_ids):
        # input_ids, position_ids: [B, S] -> [B, S, H]
        return self.dropout(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))


class PanGuAttention(nn.Layer):
    """Multi-head attention with separate Q/K/V dense layers (REF "attention").

    `query_states` lets the query layer feed a different query source than
    the key/value source (REF "query layer").
    """

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        h, std = config.hidden_size, config.initializer_range
        self.parallel = parallel
        self.num_heads = config.num_attention_heads // parallel.mp_degree  # local heads on this mp rank
        self.head_dim = config.head_dim
        # REF: three dense layers, never fused in checkpoints; all with bias
        self.q_proj = pl.column_linear(parallel, h, h, weight_attr=normal_attr(std))
        self.k_proj = pl.column_linear(parallel, h, h, weight_attr=normal_attr(std))
        self.v_proj = pl.column_linear(parallel, h, h, weight_attr=normal_attr(std))
        self.out_proj = pl.row_linear(parallel, h, h, weight_attr=normal_attr(output_std(config)))
        self.attn_dropout = Dropout(config.attention_probs_dropout_prob)
        self.impl = "plain"  # set_attention_impl(): "sdpa" (GPU flash / mem-efficient) or "npu" (Ascend FA)

    def _split_heads(self, x):
        return ops.split_heads(x, self.num_heads, self.head_dim)  # [B, S, nh*hd] -> [B, nh, S, hd]

    def forward(self, hidden, attention_mask, query_states=None, past_key_value=None, use_cache=False):
        """hidden: [B, S, H] (keys/values); query_states: [B, S, H] or None (= hidden);
        attention_mask: additive [B or 1, 1, S, T]; past_key_value: (k, v) each [B, nh, P, hd]."""
        if query_states is None:  # [B, S, H] each; one kernel call for the three in an int8 / bf16 decode step
            q, k, v = ops.linears((self.q_proj, self.k_proj, self.v_proj), hidden)
        else:  # the query layer: q from the top query embedding, k / v from hidden
            q = ops.linear(self.q_proj, query_states)
            k, v = ops.linears((self.k_proj, self.v_proj), hidden)
        q, q_scaled = ops.prescale_query(q, self.impl, self.head_dim)  # CPU fast path: 1/sqrt(hd) on q
        q = self._split_heads(q)
        k = self._split_heads(k)
        v = self._split_heads(v)
        if past_key_value is not None:
            k = paddle.concat([past_key_value[0], k], axis=2)  # [B, nh, T, hd]
            v = paddle.concat([past_key_value[1], v], axis=2)
        present = (k, v) if use_cache else None
        # REF: score = QK^T / sqrt(head_dim); softmax in fp32
        ctx = ops.attention(q, k, v, attention_mask, head_dim=self.head_dim, dropout=self.attn_dropout,
                            training=self.training, parallel=self.parallel, impl=self.impl, q_scaled=q_scaled)
        ctx = ops.merge_heads(ctx, self.num_heads, self.head_dim)  # [B, S, nh*hd]
        return ops.linear(self.out_proj, ctx), present


def set_attention_impl(model: nn.Layer, impl: str) -> int:
    """Choose the attention kernel of every PanGuAttention in `model` (plain, pipeline or parallel).

    "plain" is the reference math; "sdpa" is paddle's scaled_dot_product_attention (flash / memory-
    efficient kernels on GPU, a math fallback elsewhere); "npu" is the Ascend plugin's flash attention.
    Use `paddle_pangu.parallel.device.fused_attention_available` to pick. Returns layers switched.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl {impl!r}: expected one of {ATTENTION_IMPLS}")
    layers = [m for m in model.sublayers(include_self=True) if isinstance(m, PanGuAttention)]
    for layer in layers:
        layer.impl = impl
    return len(layers)


class PanGuMLP(nn.Layer):
    """REF "FFN": mapping H->F (bias), activation, projection F->H (bias)."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.fc_in = pl.column_linear(parallel, h, f, weight_attr=normal_attr(config.initializer_range))
        self.fc_out = pl.row_linear(parallel, f, h, weight_attr=normal_attr(output_std(config)))
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return ops.linear(self.fc_out, self.act(ops.linear(self.fc_in, x)))  # [B, S, H]


class PanGuBlock(nn.Layer):
    """Pre-LN transformer block (REF "block"): x += Attn(LN1(x)); x += FFN(LN2(x))."""

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__()
        eps = config.layer_norm_eps
        self.input_layernorm = FP32LayerNorm(config.hidden_size, epsilon=eps)
        self.attention = PanGuAttention(config, parallel)
        self.post_attention_layernorm = FP32LayerNorm(config.hidden_size, epsilon=eps)
        self.mlp = PanGuMLP(config, parallel)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def _attend(self, hidden, attention_mask, query_states, past_key_value, use_cache):
        attn_out, present = self.attention(
            self.input_layernorm(hidden), attention_mask, query_states, past_key_value, use_cache
        )
        hidden = hidden + self.dropout(attn_out)
        hidden = hidden + self.dropout(self.mlp(self.post_attention_layernorm(hidden)))
        return hidden, present

    def forward(self, hidden, attention_mask, past_key_value=None, use_cache=False):
        """hidden [B, S, H] -> ([B, S, H], present (k, v) or None)."""
        return self._attend(hidden, attention_mask, None, past_key_value, use_cache)


class PanGuQueryLayer(PanGuBlock):
    """The top query layer (REF "query layer").

    Same structure as a block, but the attention query is
    `Q(top_query_embedding[position_ids])` (no layernorm, no dropout on the
    table lookup) while keys/values come from LN1(h). The residual adds to
    the layer input h, which is already the final-layernormed hidden state
    (REF "final layernorm": LN_final before the query layer, none after).
    """

    def __init__(self, config: PanGuConfig, parallel: ParallelContext = PLAIN):
        super().__init__(config, parallel)
        self.top_query_embedding = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, weight_attr=normal_attr(config.initializer_range)
        )

    def forward(self, hidden, position_ids, attention_mask, past_key_value=None, use_cache=False):
        query = self.top_query_embedding(position_ids)  # [B, S, H]
        return self._attend(hidden, attention_mask, query, past_key_value, use_cache)
