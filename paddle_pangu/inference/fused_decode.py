"""Decode steps of an int8 / bf16 model as one compiled call per decoder layer (issue 25).

A dygraph decode step through the general ops dispatched ~85 Paddle ops (docs/INT8.md profile); at batch 1
that framework overhead was about half the step. Here a step of B <= 16 rows, one new token each, is:
the word + position embedding lookups and their sum, one `pangu_{int8,bf16}_decode_layer_` call per block
(LN1 -> q / k / v -> append to the cache -> masked attention -> out projection -> residual -> LN2 -> FFN ->
residual, kernels/int8_kernels.cc DecodeLayer), the final layernorm (REF "final layernorm": before the
query layer), the top query embedding lookup and one call for the query layer (REF "query layer": its q from
that embedding, k / v from LN1(h)), then the quantised head: 9 + L op dispatches.

The KV cache of these steps is a `FusedCache`: per layer a preallocated [B, nh, cap, hd] pair written in place
at column t (no concat per step). It lives in the decode state only (the stepper's cache object): the model's
training and export code keep their (k, v) tuples, and every other path (prefill, the batch decoder's
select / pad / concat / trim when rows join or leave) sees a tuple again through `as_tuple`.

The fused layer equals the general ops within an fp32 rounding bound (its attention and layer norms sum in
their own order), not bit for bit: tests/unit/test_fused_decode.py derives the bound. `set_fused_decode(False)`
turns it off (the general ops then decode: the bit-for-bit comparisons of the shortcuts use that).
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F

from .. import kernels
from ..model import ops

_STATE = {"on": True}
ACT_CODES = {"gelu_tanh": 0, "gelu": 1, "fast_gelu": 2}  # int8_kernels.cc Activation (REF "activation")
MAX_ROWS = 16  # the kernels' decode tiles (kGemmRows)


def set_fused_decode(on: bool) -> bool:
    """Turn the fused decode layer on or off; returns the previous setting."""
    previous, _STATE["on"] = _STATE["on"], bool(on)
    return previous


class FusedCache:
    """Per layer (k, v) buffers [B, nh, cap, hd], columns [0, t) filled; the decode state's KV cache."""

    def __init__(self, kv: list, t: int):
        self.kv, self.t = kv, int(t)

    @property
    def capacity(self) -> int:
        return int(self.kv[0][0].shape[2])

    @classmethod
    def from_tuple(cls, cache, capacity: int) -> "FusedCache":
        """Copy the model's cache (one (k, v) [B, nh, T, hd] per layer) into buffers of `capacity` > T columns:
        [B, nh, T, hd] + zeros [B, nh, capacity - T, hd]."""
        t = int(cache[0][0].shape[2])
        if capacity <= t:
            raise ValueError(f"fused decode: a cache of {capacity} columns for {t} filled ones and the next")

        def grown(src):
            b, nh, _, hd = src.shape
            return paddle.concat([src, paddle.zeros([b, nh, capacity - t, hd], src.dtype)], axis=2)

        return cls([(grown(k), grown(v)) for k, v in cache], t)

    def as_tuple(self):
        """The model's cache layout: one (k, v) [B, nh, t, hd] per layer (views of the filled columns)."""
        return tuple((k[:, :, : self.t], v[:, :, : self.t]) for k, v in self.kv)


def as_tuple(cache):
    """`cache` in the model's layout (a FusedCache converted; anything else as it is)."""
    return cache.as_tuple() if isinstance(cache, FusedCache) else cache


def grown_capacity(t: int, context: int) -> int:
    """Columns to allocate for a cache about to hold t + 1: doubling (amortised copies), at least 64 spare,
    at most the model's context (no row can exceed it: decoding.fit_prompt) unless t + 1 already does."""
    return max(t + 1, min(max(2 * (t + 1), t + 65), context))


class FusedDecoder:
    """The fused decode step of one int8 / bf16 PanGuForCausalLM (see the module docstring). Holds references to
    the model's tensors (no copies), gathered once."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.mode = getattr(model, "weights_mode", None)
        pangu = model.pangu
        self.word = pangu.embeddings.word_embeddings.weight
        self.position = pangu.embeddings.position_embeddings.weight
        self.final_ln = pangu.final_layernorm
        self.top_query = pangu.query_layer.top_query_embedding.weight
        self.layers = [self._operands(block) for block in list(pangu.layers) + [pangu.query_layer]]
        self.act = ACT_CODES[self.config.hidden_act]
        self.eps = float(self.config.layer_norm_eps)
        self.q_proj = pangu.query_layer.attention.q_proj  # its .threads: quantize.set_threads may change it

    def _operands(self, block) -> tuple:
        """The layer call's tensor arguments after x and query: (norms, qweights, scales, biases) for int8,
        (norms, weights, biases) for bf16."""
        att, mlp = block.attention, block.mlp
        linears = [att.q_proj, att.k_proj, att.v_proj, att.out_proj, mlp.fc_in, mlp.fc_out]
        norms = [block.input_layernorm.weight, block.input_layernorm.bias, block.post_attention_layernorm.weight,
                 block.post_attention_layernorm.bias]
        if self.mode == "int8":
            return norms, [m.qweight for m in linears], [m.scale for m in linears], [m.bias for m in linears]
        return norms, [m.weight for m in linears], [m.bias for m in linears]

    @staticmethod
    def usable(model, ids: np.ndarray, cache) -> bool:
        """A decode step the fused layer takes: int8 / bf16 model in eval mode on the CPU, one new token per row,
        at most MAX_ROWS rows, a cache, the switch and the decode shortcuts on, dygraph."""
        return (_STATE["on"] and cache is not None and ids.ndim == 2 and ids.shape[1] == 1
                and 1 <= ids.shape[0] <= MAX_ROWS and getattr(model, "weights_mode", None) in ("int8", "bf16")
                and not model.training and ops.decode_shortcuts_on() and paddle.in_dynamic_mode()
                and model.get_input_embeddings().weight.place.is_cpu_place())

    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache):
        """(ids [B, 1], positions [B, 1], padding mask [B, t + 1], cache) -> (logits [B, V] fp32 numpy, FusedCache)."""
        if not isinstance(cache, FusedCache):
            t = int(cache[0][0].shape[2])
            cache = FusedCache.from_tuple(cache, grown_capacity(t, self.config.max_position_embeddings))
        elif cache.t + 1 > cache.capacity:
            cache = FusedCache.from_tuple(cache.as_tuple(),
                                          grown_capacity(cache.t, self.config.max_position_embeddings))
        t = cache.t
        if mask.shape[1] != t + 1:
            raise ValueError(f"fused decode: padding mask of {mask.shape[1]} columns for a cache of {t} + 1")
        ids_t, pos_t = paddle.to_tensor(ids), paddle.to_tensor(positions)
        mask_t = paddle.to_tensor(np.ascontiguousarray(mask, dtype="int64"))
        # REF "embeddings": word + position, [B, 1, H] (dropout is the identity at inference)
        x = F.embedding(ids_t, self.word) + F.embedding(pos_t, self.position)
        threads = self.q_proj.threads or kernels.threads()
        run = kernels.int8_decode_layer_ if self.mode == "int8" else kernels.bf16_decode_layer_
        for i, args in enumerate(self.layers):
            k, v = cache.kv[i]
            query_layer = i == len(self.layers) - 1
            if query_layer:  # REF "final layernorm" before the query layer; its q from the top query embedding
                x = F.layer_norm(x, [x.shape[-1]], self.final_ln.weight, self.final_ln.bias, self.final_ln.eps)
                query = F.embedding(pos_t, self.top_query)  # [B, 1, H]
            else:
                query = x
            run(x, query, *args, k, v, mask_t, t, self.eps, self.act, query_layer, threads)
        cache.t = t + 1
        logits = self.model.quantized_head(x)  # [B, 1, V] (REF "output head", the int8 / bf16 copy)
        return logits.numpy()[:, -1, :], cache
