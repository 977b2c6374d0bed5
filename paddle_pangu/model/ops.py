"""The model's operations and where each runs: the one file between `model/layers.py` and `kernels/`.

`layers.py` states the math once (`linear`, `layer_norm`, `attention`, ...); each function here picks
the implementation: the fused fp32 CPU kernel of `paddle_pangu.kernels` (dygraph CPU training; each
returns None where it does not apply), a CPU fast path on Paddle ops, Paddle's own op, or the Ascend
plugin's `flash_attention_npu`. Every choice keeps the math: the fast paths are checked against the
reference ops in tests/unit/test_fast_paths.py, the kernels in tests/unit/test_kernels.py, the NPU op in
tests/unit/test_npu_attention.py.

Shapes: B batch, S new tokens, T = past + S keys, nh heads (local to this tensor-parallel rank), hd head dim.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .. import kernels
from ..parallel import fleet_compat
from ..parallel import layers as pl
from ..parallel.context import ParallelContext

ATTENTION_IMPLS = ("plain", "sdpa", "npu")
# CPU fast paths that keep the math: a dense layer's bias folded into its GEMM (paddle.addmm: one pass
# over the output instead of matmul then add) and 1/sqrt(hd) applied to q [B, S, H] instead of the
# [B, nh, S, T] scores (exact when hd is a power of two). GPU/NPU keep their own kernels.
_FAST_PATHS = {"on": True, "decode": True}


def set_fast_paths(on: bool) -> bool:
    """Turn the CPU fast paths on or off (off = the reference ops); returns the previous setting."""
    previous, _FAST_PATHS["on"] = _FAST_PATHS["on"], bool(on)
    return previous


def set_decode_shortcuts(on: bool) -> bool:
    """Turn the dygraph decode-step shortcuts (one_new_token) on or off; returns the previous setting.
    Off = the general ops, so a test can compare the two bit for bit."""
    previous, _FAST_PATHS["decode"] = _FAST_PATHS["decode"], bool(on)
    return previous


def decode_shortcuts_on() -> bool:
    return _FAST_PATHS["on"] and _FAST_PATHS["decode"]


def linear(layer, x):
    """`layer(x)`; for a plain nn.Linear on CPU in dygraph, as one addmm (bias inside the GEMM), or the
    fused kernel when training. Tensor-parallel / int8 / bf16 layers, static graphs (export) and other
    devices run the layer itself."""
    if not (_FAST_PATHS["on"] and type(layer) is nn.Linear and layer.bias is not None
            and paddle.in_dynamic_mode() and x.place.is_cpu_place()):
        return layer(x)
    out = kernels.linear(x, layer.weight, layer.bias)  # training: the same addmm, a fast bias gradient
    if out is not None:
        return out
    out = paddle.addmm(layer.bias, x.reshape([-1, x.shape[-1]]), layer.weight)  # [B*S, out]
    return out.reshape(x.shape[:-1] + [layer.weight.shape[1]])


def linears(layers, x):
    """[linear(layer, x) for layer in layers]; in a dygraph decode step (one_new_token) whose layers are all of
    one converted type offering `linear_cat` (inference.quantize's int8 / bf16 layers), one kernel call for
    all of them (the same outputs bit for bit; one dispatch and one parallel region instead of one per layer:
    docs/INT8.md profile). x [B, S, K] -> one [B, S, N_g] per layer."""
    cat = getattr(type(layers[0]), "linear_cat", None)
    if cat is not None and all(type(m) is type(layers[0]) for m in layers) and one_new_token(x, 1) \
            and x.shape[0] <= 16:  # the kernels' decode tiles (more rows: the prefill GEMM, layer by layer)
        return list(cat(layers, x))
    return [linear(m, x) for m in layers]


def layer_norm(x, normalized_shape, weight, bias, eps: float):
    """LayerNorm of x over `normalized_shape`: the fused CPU kernel (one normalized dimension), else Paddle's."""
    out = kernels.layer_norm(x, weight, bias, eps) if len(normalized_shape) == 1 else None
    if out is None:  # not a CPU training step (see paddle_pangu/kernels): Paddle's kernel
        out = F.layer_norm(x, normalized_shape, weight, bias, eps)
    return out


def swap_dims12(x):
    """[A, B, C, D] -> [A, C, B, D]: a dense copy on CPU training (the kernel), else a strided transpose."""
    dense_copy = kernels.swap_dims12(x)
    return dense_copy if dense_copy is not None else x.transpose([0, 2, 1, 3])


def one_new_token(x, axis: int) -> bool:
    """A dygraph decode step (x.shape[axis] == S == 1) with the CPU fast paths on: then [B, 1, nh, hd] and
    [B, nh, 1, hd] are the same bytes, so a head split / merge is one reshape instead of a reshape and a
    transpose (4 transposes a layer, 16 per decode step of the bench model; docs/INT8.md profile). Static
    graphs (export) keep the general ops: their S is dynamic."""
    return decode_shortcuts_on() and paddle.in_dynamic_mode() and x.shape[axis] == 1


def split_heads(x, num_heads: int, head_dim: int):
    """[B, S, nh*hd] -> [B, nh, S, hd]; 0 = keep that dimension (no shape ops in an exported graph)."""
    if one_new_token(x, 1):
        return x.reshape([0, num_heads, 1, head_dim])  # [B, 1, nh*hd] -> [B, nh, 1, hd]: the same bytes
    return swap_dims12(x.reshape([0, 0, num_heads, head_dim]))


def merge_heads(x, num_heads: int, head_dim: int):
    """[B, nh, S, hd] -> [B, S, nh*hd]."""
    if one_new_token(x, 2) and x.is_contiguous():
        return x.reshape([0, 1, num_heads * head_dim])  # [B, nh, 1, hd] -> [B, 1, nh*hd]: the same bytes
    return swap_dims12(x).reshape([0, 0, num_heads * head_dim])


def scale_on_q(impl: str, dtype, head_dim: int) -> bool:
    """Scale q instead of the scores (plain attention only): S*hd multiplies instead of S*T, exact in any
    dtype for a power-of-two hd (x * 2^-n commutes with rounding), within fp32 rounding otherwise."""
    return impl == "plain" and _FAST_PATHS["on"] and (dtype == paddle.float32 or head_dim & (head_dim - 1) == 0)


def prescale_query(q, impl: str, head_dim: int):
    """q [B, S, H] -> (q, q_scaled): q times 1/sqrt(hd) when `scale_on_q` (on the dense [B, S, H]: the same
    products as on the heads' strided view, 50x faster), else q unchanged."""
    if not scale_on_q(impl, q.dtype, head_dim):
        return q, False
    return q * (1.0 / math.sqrt(head_dim)), True


def masked_softmax(scores, mask):
    """softmax(scores + mask, axis=-1), scores fp32 [B, nh, S, T], mask additive (broadcasts) or None."""
    probs = kernels.masked_softmax(scores, mask)  # CPU training: mask + softmax in one kernel
    if probs is None:
        if mask is not None:
            scores = scores + mask
        probs = F.softmax(scores, axis=-1)
    return probs


def attention(q, k, v, mask, *, head_dim: int, dropout, training: bool, parallel: ParallelContext,
              impl: str = "plain", q_scaled: bool = False):
    """softmax(q k^T / sqrt(hd) + mask) v with dropout on the probabilities.

    q [B, nh, S, hd] (already times 1/sqrt(hd) when q_scaled), k/v [B, nh, T, hd], mask additive
    [B or 1, 1, S, T] or None -> context [B, nh, S, hd]. `dropout` is the probabilities' dropout layer,
    run in this tensor-parallel rank's RNG stream. impl: "plain" (the reference math), "sdpa" (Paddle's
    scaled_dot_product_attention) or "npu" (the Ascend flash attention op).
    """
    if impl == "plain":
        scores = paddle.matmul(q, k, transpose_y=True).astype("float32")  # [B, nh, S, T], softmax in fp32
        if not q_scaled:
            scores = scores / math.sqrt(head_dim)
        probs = masked_softmax(scores, mask).astype(q.dtype)
        with pl.local_rng(parallel):  # this rank's heads: a dropout stream per tensor-parallel rank
            probs = dropout(probs)
        return paddle.matmul(probs, v)
    # fused kernels take [B, S, nh, hd]; same math (the kernels accumulate the softmax in fp32)
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
    p = dropout.p if training else 0.0
    with pl.local_rng(parallel):
        if impl == "npu":
            out = npu_flash_attention(q, k, v, mask, p, training)
        else:
            mask = None if mask is None else mask.astype(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, training=training)
    return out.transpose([0, 2, 1, 3])


def tied_head(hidden, embedding_weight, parallel: ParallelContext, *, parallel_output: bool, weight_t=None,
              quantized=None):
    """hidden [B, S, H] -> logits [B, S, V(_local)]: the quantized head layer `inference.quantize` attached
    (int8 / bf16 kernels) when there is one, else hidden @ embedding_weight^T (`pl.tied_lm_logits`; weight_t
    an [H, V(_local)] inference copy of the embedding)."""
    if quantized is not None:
        return quantized(hidden)
    return pl.tied_lm_logits(parallel, hidden, embedding_weight, parallel_output=parallel_output, weight_t=weight_t)


def cross_entropy(logits, labels, parallel: ParallelContext):
    """Per-token cross entropy in fp32. logits [B, S, V] (under tensor parallelism this rank's shard
    [B, S, V/mp]), labels [B, S] int64 -> [B, S]."""
    if parallel.tensor_parallel:
        return pl.vocab_parallel_cross_entropy(parallel, logits, labels)
    logits = logits.astype("float32")
    loss = kernels.softmax_cross_entropy(logits, labels)  # CPU training: the fused kernel
    if loss is None:
        loss = F.cross_entropy(logits, labels.unsqueeze(-1), reduction="none").squeeze(-1)
    return loss


def npu_flash_attention(q, k, v, additive_mask, dropout: float, training: bool):
    """Ascend flash attention from the paddle-custom-npu plugin ([B, S, nh, hd]; mask True = masked),
    called as PaddleNLP's NPU fusion ops call it."""
    masked = None if additive_mask is None else additive_mask < 0
    return fleet_compat.run_custom_op(
        "flash_attention_npu", q, k, v, None, masked, dropout, False, False, not training, False
    )[0]
