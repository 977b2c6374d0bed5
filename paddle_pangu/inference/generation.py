"""Autoregressive generation with a KV cache.

What users of the references had (REF "Generation"): greedy, top-k, top-p,
temperature, the MindSpore frequency / presence penalties, batches of
prompts with left padding, and stopping at `<eot>` (id 9). On top: the CTRL
repetition penalty, several stop ids, stop strings (text level, see
`streaming.TextStream`), a per-row RNG (a seeded row samples the same tokens
whatever its batch companions) and an explicit over-long-prompt policy.
The batch loop itself is `decoding.BatchDecoder`, shared with the server.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields

import numpy as np
import paddle

from ..errors import UsageError

TRUNCATE_POLICIES = ("error", "left")


_INT, _REAL = (numbers.Integral,), (numbers.Real,)
_FIELD_TYPES = {"max_new_tokens": _INT, "do_sample": (bool, numbers.Integral), "temperature": _REAL, "top_k": _INT,
                "top_p": _REAL, "frequency_penalty": _REAL, "presence_penalty": _REAL, "repetition_penalty": _REAL,
                "eos_token_id": _INT, "pad_token_id": _INT, "seed": (numbers.Integral, type(None)), "truncate": (str,)}


@dataclass
class SamplingConfig:
    """How the next token is chosen (one config per row; the server builds one per request).

    Args:
        max_new_tokens: tokens to generate after the prompt.
        do_sample: sample (True) or take the argmax (False, greedy).
        temperature: divide logits by this before sampling; 0 means greedy (as the OpenAI API defines it).
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p (1.0 = off).
        frequency_penalty: subtract penalty * count(token in the generated text) (MindSpore / OpenAI).
        presence_penalty: subtract penalty once for each token already generated (MindSpore / OpenAI).
        repetition_penalty: CTRL / HF: logits of tokens in the prompt or the generated text are divided by
            it when positive and multiplied when negative (1.0 = off).
        eos_token_id: stop at this id (REF: 9 `<eot>`).
        stop_token_ids: further ids that end a row (not included in the output).
        pad_token_id: left padding id (REF: 6).
        seed: seed of this row's own RNG (None = random).
        truncate: over-long prompts: "error" (a UsageError) or "left" (keep the last tokens that fit).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    eos_token_id: int = 9
    stop_token_ids: tuple = field(default_factory=tuple)
    pad_token_id: int = 6
    seed: int | None = None
    truncate: str = "error"

    def __post_init__(self):
        for name, kinds in _FIELD_TYPES.items():  # e.g. a JSON request's "temperature": "hot" is a UsageError
            value = getattr(self, name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise UsageError(f"{name} must be a {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0 = off)"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 = off)"),
            ("truncate", self.truncate in TRUNCATE_POLICIES, f"one of {TRUNCATE_POLICIES}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise UsageError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def stop_ids(self) -> frozenset:
        return frozenset((self.eos_token_id, *self.stop_token_ids))

    @classmethod
    def build(cls, cfg: "SamplingConfig | None" = None, **overrides) -> "SamplingConfig":
        """`cfg` (or the defaults) with keyword overrides; unknown names are a UsageError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"unknown sampling argument(s) {unknown}; expected some of {sorted(known)}")
        base = {f.name: getattr(cfg, f.name) for f in fields(cls)} if cfg is not None else {}
        return cls(**{**base, **overrides})


def left_pad(prompts: list[list[int]], pad_token_id: int):
    """Prompts of different lengths -> ids [B, S], padding mask [B, S] (1 = token), position ids [B, S]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UsageError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full([len(prompts), width], pad_token_id, dtype="int64")
    mask = np.zeros([len(prompts), width], dtype="int64")
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def filter_logits(logits: np.ndarray, counts: np.ndarray, cfg: SamplingConfig, seen: np.ndarray | None = None):
    """One row's logits [V] fp32 -> penalised, tempered, top-k/top-p filtered logits [V] (-inf = dropped).

    counts [V]: how often each token was generated so far; seen [V] bool: in the prompt or generated."""
    if cfg.greedy and not (cfg.frequency_penalty or cfg.presence_penalty) and cfg.repetition_penalty == 1.0:
        return logits  # nothing to change: argmax picks from the logits as they are
    logits = logits.astype("float64") - cfg.frequency_penalty * counts - cfg.presence_penalty * (counts > 0)
    if cfg.repetition_penalty != 1.0 and seen is not None:
        hit = logits[seen]
        logits[seen] = np.where(hit > 0, hit / cfg.repetition_penalty, hit * cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = np.partition(logits, -cfg.top_k)[-cfg.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    if cfg.top_p < 1.0:
        order = np.argsort(-logits, kind="stable")
        probs = _softmax(logits[order])
        drop_sorted = np.cumsum(probs) - probs >= cfg.top_p  # keep the tokens needed to reach p, always the first
        logits = logits.copy()
        logits[order[drop_sorted]] = -np.inf
    return logits


def _softmax(x: np.ndarray) -> np.ndarray:
    p = np.exp(x - x.max())
    return p / p.sum()


def choose_token(filtered: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """argmax when greedy, else one draw from softmax(filtered) with this row's own RNG (one uniform per draw)."""
    if cfg.greedy:
        return int(filtered.argmax())
    cdf = np.cumsum(_softmax(filtered))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


class DygraphStepper:
    """One decoding step of a dygraph PanGuForCausalLM: (ids, positions, mask, cache) -> (last logits, cache).

    The cache is the model's own: one (k, v) per layer, each [B, heads, T, head_dim]; the
    select / pad_left / concat / trim_left helpers let the batch decoder add and drop rows.

    frozen=True promises that the model's weights do not change while the stepper lives (a model loaded
    to be served or to answer `pangu generate`): the tied head is then copied once into the [H, V] layout.
    Per decode token the head is a GEMV over the largest weight, and MKL reads [H, V] about 2x faster than
    the embedding's [V, H] (40k x 512: 3.7 vs 7.0 ms at batch 1, 6.0 vs 8.9 ms at batch 8; AMD EPYC). The
    copy costs one transpose of the embedding (~90 ms here) and its memory, so a one-off `generate` call,
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

    @paddle.no_grad()
    def __call__(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, cache):
        logits, cache = self.model(
            paddle.to_tensor(ids), position_ids=paddle.to_tensor(positions),
            attention_mask=paddle.to_tensor(mask), past_key_values=cache, use_cache=True,
            logits_to_keep=1,  # the head on the sampled (last) position only: prefill skips S-1 rows of [H, V]
            head_weight_t=self.head_t,
        )
        return logits[:, -1, :].astype("float32").numpy(), cache  # [B, V]

    @staticmethod
    def select(cache, rows: list[int]):
        index = paddle.to_tensor(np.asarray(rows, dtype="int64"))
        return tuple((paddle.gather(k, index, axis=0), paddle.gather(v, index, axis=0)) for k, v in cache)

    @staticmethod
    def pad_left(cache, n: int):
        if n == 0:
            return cache
        return tuple(tuple(paddle.concat([paddle.zeros([t.shape[0], t.shape[1], n, t.shape[3]], t.dtype), t], 2)
                           for t in kv) for kv in cache)

    @staticmethod
    def concat(a, b):
        return tuple((paddle.concat([ka, kb], 0), paddle.concat([va, vb], 0)) for (ka, va), (kb, vb) in zip(a, b))

    @staticmethod
    def trim_left(cache, n: int):
        return tuple((k[:, :, n:], v[:, :, n:]) for k, v in cache) if n else cache


def decode_loop(step, config, prompts: list[list[int]], cfg: SamplingConfig) -> list[list[int]]:
    """The loop shared by dygraph and Paddle Inference backends: every prompt with `cfg`; new ids per prompt."""
    from .decoding import BatchDecoder, Row

    rows = [Row(p, cfg) for p in prompts]
    decoder = BatchDecoder(step, config)
    decoder.add(rows)
    while decoder.rows:
        decoder.step()
    return [r.tokens for r in rows]


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
    from .decoding import BatchDecoder, Row
    from .streaming import TextStream

    cfg = SamplingConfig.build(cfg, **sampling)
    streams = [TextStream(tokenizer, stop) for _ in prompts]
    rows = [Row(tokenizer.encode_ids(p), cfg, on_token=s.push_stops) for p, s in zip(prompts, streams)]
    decoder = BatchDecoder(DygraphStepper(model), model.config)
    decoder.add(rows)
    while decoder.rows:
        decoder.step()
    return [s.text for s in streams]
