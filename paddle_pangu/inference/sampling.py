"""How the next token is chosen: `SamplingConfig`, the logits filters and the token choice.

The filters users of the references had (REF "Generation"): greedy, top-k, top-p, temperature and the
MindSpore frequency / presence penalties; on top, the CTRL repetition penalty. Each row draws from its
own RNG (`choose_token`), so a seeded row samples the same tokens whatever its batch companions.
The drivers (`generation`, `decoding.BatchDecoder`, the server) import from here; nothing here imports them.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields

import numpy as np

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

    @classmethod
    def from_options(cls, options, model_config=None, **overrides) -> "SamplingConfig":
        """The one way user options become a SamplingConfig (`pangu generate` flags, an HTTP request).

        `options`: an object whose attributes named like the fields are read (an argparse Namespace, a
        request model; None = not given, the default); `model_config`: the model's eos / pad ids (REF:
        `<eot>` 9, pad 6); `overrides`: what the caller spells differently (the HTTP `max_tokens`, the CLI
        `--stop-id`). Validation and its one-line UsageError are __post_init__'s, the same for every caller."""
        given = {f.name: getattr(options, f.name) for f in fields(cls) if getattr(options, f.name, None) is not None}
        if model_config is not None:
            given.update(eos_token_id=model_config.eos_token_id, pad_token_id=model_config.pad_token_id)
        return cls.build(None, **{**given, **overrides})


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
