"""Autoregressive generation with a KV cache.

What users of the references had (REF "Generation"): greedy, top-k, top-p,
temperature, the MindSpore frequency / presence penalties, batches of
prompts with left padding, and stopping at `<eot>` (id 9).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle


@dataclass
class SamplingConfig:
    """How the next token is chosen.

    Args:
        max_new_tokens: tokens to generate after the prompt.
        do_sample: sample (True) or take the argmax (False, greedy).
        temperature: divide logits by this before sampling (> 0).
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p (1.0 = off).
        frequency_penalty: subtract penalty * count(token in the generated text) (MindSpore).
        presence_penalty: subtract penalty once for each token already generated (MindSpore).
        eos_token_id: stop at this id (REF: 9 `<eot>`).
        pad_token_id: left padding id (REF: 6).
        seed: seed of the sampling RNG (None = random).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    eos_token_id: int = 9
    pad_token_id: int = 6
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def left_pad(prompts: list[list[int]], pad_token_id: int):
    """Prompts of different lengths -> ids [B, S], padding mask [B, S] (1 = token), position ids [B, S]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full([len(prompts), width], pad_token_id, dtype="int64")
    mask = np.zeros([len(prompts), width], dtype="int64")
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def _filter_logits(logits: np.ndarray, counts: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """logits [B, V] fp32 -> penalised, tempered, top-k/top-p filtered logits [B, V]."""
    logits = logits - cfg.frequency_penalty * counts - cfg.presence_penalty * (counts > 0)
    logits = logits / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < logits.shape[-1]:
        kth = np.partition(logits, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    if cfg.top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        cum = np.cumsum(probs, axis=-1)
        drop_sorted = cum - probs >= cfg.top_p  # keep the tokens needed to reach p, always the first
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits = np.where(drop, -np.inf, logits)
    return logits


def _choose(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])


class DygraphStepper:
    """One decoding step of a dygraph PanGuForCausalLM: (ids, positions, mask, cache) -> (last logits, cache)."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        model.eval()

    @paddle.no_grad()
    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache):
        logits, cache = self.model(
            paddle.to_tensor(ids), position_ids=paddle.to_tensor(positions),
            attention_mask=paddle.to_tensor(mask), past_key_values=cache, use_cache=True,
        )
        return logits[:, -1, :].astype("float32").numpy(), cache  # [B, V]


def decode_loop(step, config, prompts: list[list[int]], cfg: SamplingConfig) -> list[list[int]]:
    """The sampling loop shared by dygraph and Paddle Inference backends; returns new ids per prompt."""
    rng = np.random.default_rng(cfg.seed)
    ids, mask, positions = left_pad(prompts, cfg.pad_token_id)
    limit = config.max_position_embeddings
    if ids.shape[1] + cfg.max_new_tokens > limit:
        raise ValueError(
            f"prompt length {ids.shape[1]} + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
            f"max_position_embeddings {limit}"
        )
    batch = ids.shape[0]
    counts = np.zeros([batch, config.vocab_size], dtype="float32")
    done = np.zeros([batch], dtype=bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    step_ids, step_pos, cache = ids, positions, None
    for _ in range(cfg.max_new_tokens):
        last, cache = step(step_ids, step_pos, mask, cache)
        nxt = _choose(_filter_logits(last, counts, cfg), cfg, rng)
        for row in np.nonzero(~done)[0]:
            token = int(nxt[row])
            if token == cfg.eos_token_id:
                done[row] = True
            else:
                out[row].append(token)
                counts[row, token] += 1
        if done.all():
            break
        step_ids = np.where(done, cfg.pad_token_id, nxt)[:, None].astype("int64")
        step_pos = positions[:, -1:] + 1
        positions = np.concatenate([positions, step_pos], axis=1)
        mask = np.concatenate([mask, np.ones([batch, 1], dtype="int64")], axis=1)
    return out


def generate(model, prompts: list[list[int]], cfg: SamplingConfig | None = None) -> list[list[int]]:
    """Generate continuations for token-id prompts with a KV cache; returns the new ids (without eos)."""
    return decode_loop(DygraphStepper(model), model.config, prompts, cfg or SamplingConfig())


def generate_text(model, tokenizer, prompts: list[str], cfg: SamplingConfig | None = None) -> list[str]:
    """Text in, text out: encode with the PanGu tokenizer, generate, decode the continuation."""
    cfg = cfg or SamplingConfig()
    token_prompts = [tokenizer.encode_ids(p) for p in prompts]
    return [tokenizer.decode_ids(ids) for ids in generate(model, token_prompts, cfg)]
