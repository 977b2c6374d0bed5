"""PanGu-alpha building blocks: the model math, written once.

Every PanGu-specific choice cites docs/REFERENCE.md ("REF").
Splittable layers come from `paddle_pangu.parallel.layers`, built for the
`ParallelContext` each layer receives (default: plain), so the same code runs
plain (one process) or tensor-parallel under fleet.

Shapes: B batch, S new tokens, T = past + S keys, H hidden, nh heads
(local to this tensor-parallel rank), hd head dim, F ffn width.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import kernels
from ..config import PanGuConfig
from ..parallel import fleet_compat
from ..parallel import layers as pl
from ..parallel.context import PLAIN, ParallelContext

MASK_VALUE = -10000.0  # REF "attention": additive mask -10000
ATTENTION_IMPLS = ("plain", "sdpa", "npu")
# CPU fast paths that keep the math (each checked against the reference ops in tests/unit/test_fast_paths.py):
# a dense layer's bias folded into its GEMM (paddle.addmm: one pass over the output instead of matmul then
# add; 12% less CPU per fwd+bwd at [1024, 512] x [512, 2048]) and 1/sqrt(hd) applied to q [B, nh, S, hd]
# instead of the [B, nh, S, T] scores (exact when hd is a power of two). GPU/NPU keep their own kernels.
_FAST_PATHS = {"on": True}


def set_fast_paths(on: bool) -> bool:
    """Turn the CPU fast paths on or off (off = the reference ops); returns the previous setting."""
    previous, _FAST_PATHS["on"] = _FAST_PATHS["on"], bool(on)
    return previous


class Dropout(nn.Dropout):
    """nn.Dropout that adds no op outside training. At inference dropout is the identity, yet nn.Dropout
    still runs an op: three per layer (attention probabilities, both residual branches) plus the
    embeddings' at every decode step, and in the graphs exported for Paddle Inference. Training calls
    nn.Dropout unchanged (the same masks from the same RNG)."""

    def forward(self, x):
        return super().forward(x) if self.training else x


def dense(layer, x):
    """`layer(x)`; for a plain nn.Linear on CPU in dygraph, as one addmm (bias inside the GEMM).
    Tensor-parallel layers, static graphs (export) and other devices run the layer itself."""
    if not (_FAST_PATHS["on"] and type(layer) is nn.Linear and layer.bias is not None
            and paddle.in_dynamic_mode() and x.place.is_cpu_place()):
        return layer(x)
    out = kernels.linear(x, layer.weight, layer.bias)  # training: the same addmm, a fast bias gradient
    if out is not None:
        return out
    out = paddle.addmm(layer.bias, x.reshape([-1, x.shape[-1]]), layer.weight)  # [B*S, out]
    return out.reshape(x.shape[:-1] + [layer.weight.shape[1]])


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
    """LayerNorm computed in fp32 whatever the activation dtype (REF "layernorm")."""

    def forward(self, x):
        dtype = x.dtype
        w = self.weight.astype("float32") if self.weight is not None else None
        b = self.bias.astype("float32") if self.bias is not None else None
        x = x.astype("float32")
        out = kernels.layer_norm(x, w, b, self._epsilon) if len(self._normalized_shape) == 1 else None
        if out is None:  # not a CPU training step (see paddle_pangu/kernels): Paddle's kernel
            out = F.layer_norm(x, self._normalized_shape, w, b, self._epsilon)
        return out.astype(dtype)


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
        # [B, S, nh*hd] -> [B, nh, S, hd]; 0 = keep that dimension (no shape ops in an exported graph)
        x = x.reshape([0, 0, self.num_heads, self.head_dim])
        dense_copy = kernels.swap_dims12(x)  # CPU training: one dense copy instead of a strided view
        return dense_copy if dense_copy is not None else x.transpose([0, 2, 1, 3])

    def _scale_on_q(self, dtype) -> bool:
        """Scale q instead of the scores: S*hd multiplies instead of S*T, exact in any dtype for a
        power-of-two hd (x * 2^-n commutes with rounding), within fp32 rounding otherwise."""
        hd = self.head_dim
        return _FAST_PATHS["on"] and (dtype == paddle.float32 or hd & (hd - 1) == 0)

    def _plain(self, q, k, v, attention_mask, q_scaled: bool = False):
        """q [B, nh, S, hd] (already times 1/sqrt(hd) when q_scaled), k/v [B, nh, T, hd] -> context [B, nh, S, hd]."""
        # REF: score = QK^T / sqrt(head_dim); softmax in fp32
        scores = paddle.matmul(q, k, transpose_y=True).astype("float32")  # [B, nh, S, T]
        if not q_scaled:
            scores = scores / math.sqrt(self.head_dim)
        probs = kernels.masked_softmax(scores, attention_mask)  # CPU training: mask + softmax in one kernel
        if probs is None:
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = F.softmax(scores, axis=-1)
        probs = probs.astype(q.dtype)
        with pl.local_rng(self.parallel):  # this rank's heads: a dropout stream per tensor-parallel rank
            probs = self.attn_dropout(probs)
        return paddle.matmul(probs, v)

    def _fused(self, q, k, v, attention_mask):
        """Fused kernels take [B, S, nh, hd]; same math (the kernels accumulate the softmax in fp32)."""
        q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
        p = self.attn_dropout.p if self.training else 0.0
        with pl.local_rng(self.parallel):
            if self.impl == "npu":
                out = npu_flash_attention(q, k, v, attention_mask, p, self.training)
            else:
                mask = None if attention_mask is None else attention_mask.astype(q.dtype)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, training=self.training)
        return out.transpose([0, 2, 1, 3])

    def forward(self, hidden, attention_mask, query_states=None, past_key_value=None, use_cache=False):
        """hidden: [B, S, H] (keys/values); query_states: [B, S, H] or None (= hidden);
        attention_mask: additive [B or 1, 1, S, T]; past_key_value: (k, v) each [B, nh, P, hd]."""
        q = dense(self.q_proj, hidden if query_states is None else query_states)
        q_scaled = self.impl == "plain" and self._scale_on_q(q.dtype)
        if q_scaled:  # on the dense [B, S, H]: the same products as on the heads' strided view, 50x faster
            q = q * (1.0 / math.sqrt(self.head_dim))
        q = self._split_heads(q)
        k = self._split_heads(dense(self.k_proj, hidden))
        v = self._split_heads(dense(self.v_proj, hidden))
        if past_key_value is not None:
            k = paddle.concat([past_key_value[0], k], axis=2)  # [B, nh, T, hd]
            v = paddle.concat([past_key_value[1], v], axis=2)
        present = (k, v) if use_cache else None

        if self.impl == "plain":
            ctx = self._plain(q, k, v, attention_mask, q_scaled)
        else:
            ctx = self._fused(q, k, v, attention_mask)
        merged = kernels.swap_dims12(ctx)
        ctx = merged if merged is not None else ctx.transpose([0, 2, 1, 3])
        ctx = ctx.reshape([0, 0, self.num_heads * self.head_dim])  # [B, S, nh*hd]
        return dense(self.out_proj, ctx), present


def npu_flash_attention(q, k, v, additive_mask, dropout: float, training: bool):
    """Ascend flash attention from the paddle-custom-npu plugin ([B, S, nh, hd]; mask True = masked),
    called as PaddleNLP's NPU fusion ops call it."""
    masked = None if additive_mask is None else additive_mask < 0
    return fleet_compat.run_custom_op(
        "flash_attention_npu", q, k, v, None, masked, dropout, False, False, not training, False
    )[0]


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
        return dense(self.fc_out, self.act(dense(self.fc_in, x)))  # [B, S, H]


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
