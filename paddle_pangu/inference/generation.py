"""Autoregressive generation with a KV cache.

What users of the references had (REF "Generation"): batches of prompts with left padding and
stopping at `<eot>` (id 9); the sampling filters (greedy, top-k, top-p, temperature, penalties) live in
`sampling`. On top: several stop ids, stop strings (text level, see `streaming.TextStream`) and an
explicit over-long-prompt policy. The batch loop itself is `decoding.BatchDecoder`, shared with the server.
"""
from __future__ import annotations

import numpy as np
import paddle

from .decoding import BatchDecoder, Row
from .fused_decode import FusedDecoder, as_tuple
from .sampling import SamplingConfig
from .streaming import TextStream


class DygraphStepper:
    """One decoding step of a dygraph PanGuForCausalLM: (ids, positions, mask, cache) -> (last logits, cache).

    The cache is the model's own: one (k, v) per layer, each [B, heads, T, head_dim]; the
    select / pad_left / concat / trim_left helpers let the batch decoder add and drop rows.

    frozen=True promises that the model's weights do not change while the stepper lives (a model loaded
    to be served or to answer `pangu generate`): the tied head is then copied once into the [H, V] layout.
    Per decode token the head is a GEMV over the largest weight, and MKL reads [H, V] faster than the
    embedding's [V, H] (README "Benchmarks" has the measurement). The copy costs one transpose of the
    embedding and its memory, so a one-off `generate` call,
    whose model may be training between calls, keeps reading the embedding itself, and so does a model on
    a GPU / NPU, where the layout was not measured to matter and device memory is the scarcer resource."""

    def __init__(self, model, frozen: bool = False):
        self.model = model
        self.config = model.config
        model.eval()
        self.head_t = None
        weight = model.get_input_embeddings().weight
        if frozen and weight.place.is_cpu_place() and getattr(model, "quantized_head", None) is None:
            with paddle.no_grad():
                self.head_t = weight.t().contiguous()
        # int8 / bf16 decode steps: one compiled call per layer, the cache preallocated (inference/fused_decode.py)
        self.fused = FusedDecoder(model) if getattr(model, "weights_mode", None) in ("int8", "bf16") else None

    @paddle.no_grad()
    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache):
        if self.fused is not None and FusedDecoder.usable(self.model, ids, cache):
            return self.fused(ids, positions, mask, cache)
        cache = as_tuple(cache)
        logits, cache = self.model(
            paddle.to_tensor(ids), position_ids=paddle.to_tensor(positions),
            attention_mask=paddle.to_tensor(mask), past_key_values=cache, use_cache=True,
            logits_to_keep=1,  # the head on the sampled (last) position only: prefill skips S-1 rows of [H, V]
            head_weight_t=self.head_t,
        )
        # [B, 1, V] (logits_to_keep=1): the last position is the only one; numpy's slice, not a Paddle op per step
        return logits.astype("float32").numpy()[:, -1, :], cache  # [B, V]

    # the batch decoder's cache helpers see the model's (k, v) tuples (a FusedCache converted: rows joining or
    # leaving are rare next to steps; the next fused step allocates its buffers again)
    @staticmethod
    def select(cache, rows: list[int]):
        cache = as_tuple(cache)
        index = paddle.to_tensor(np.asarray(rows, dtype="int64"))
        return tuple((paddle.gather(k, index, axis=0), paddle.gather(v, index, axis=0)) for k, v in cache)

    @staticmethod
    def pad_left(cache, n: int):
        cache = as_tuple(cache)
        if n == 0:
            return cache
        return tuple(tuple(paddle.concat([paddle.zeros([t.shape[0], t.shape[1], n, t.shape[3]], t.dtype), t], 2)
                           for t in kv) for kv in cache)

    @staticmethod
    def concat(a, b):
        a, b = as_tuple(a), as_tuple(b)
        return tuple((paddle.concat([ka, kb], 0), paddle.concat([va, vb], 0)) for (ka, va), (kb, vb) in zip(a, b))

    @staticmethod
    def trim_left(cache, n: int):
        cache = as_tuple(cache)
        return tuple((k[:, :, n:], v[:, :, n:]) for k, v in cache) if n else cache


def decode_loop(step, config, prompts: list[list[int]], cfg: SamplingConfig) -> list[list[int]]:
    """The loop shared by dygraph and Paddle Inference backends: every prompt with `cfg`; new ids per prompt."""
    return [r.tokens for r in BatchDecoder(step, config).run([Row(p, cfg) for p in prompts])]


def generate(model, prompts: list[list[int]], cfg: SamplingConfig | None = None, **sampling) -> list[list[int]]:
    """Continuations (new ids, stop ids excluded) of token-id prompts with a KV cache.

    Sampling settings come from `cfg` and/or keywords: max_new_tokens, temperature, top_k, top_p, do_sample,
    seed, stop_token_ids, frequency/presence/repetition_penalty, truncate (see SamplingConfig)."""
    # a tensor-parallel leader (inference.tensor_parallel.LeaderModel) mirrors each step to the other ranks
    step = model.make_stepper() if hasattr(model, "make_stepper") else DygraphStepper(model)
    return decode_loop(step, model.config, prompts, SamplingConfig.build(cfg, **sampling))


def generate_text(model, tokenizer, prompts: list[str], cfg: SamplingConfig | None = None,
                  stop: list[str] | tuple = (), **sampling) -> list[str]:
    """Text in, text out; `stop` strings end a row and are cut from its text (as in the OpenAI API)."""
    cfg = SamplingConfig.build(cfg, **sampling)
    streams = [TextStream(tokenizer, stop) for _ in prompts]
    rows = [Row(tokenizer.encode_ids(p), cfg, on_token=s.push_stops) for p, s in zip(prompts, streams)]
    BatchDecoder(DygraphStepper(model), model.config).run(rows)
    return [s.text for s in streams]
