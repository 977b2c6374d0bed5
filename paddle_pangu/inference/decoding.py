"""The batch decoder: rows join (prefilled on their own, their cache left-padded into the batch's) and
leave (their cache rows dropped) between steps; each row has its own SamplingConfig and RNG.

`generate` adds every prompt at once and steps until all rows are done; the server adds
requests as they arrive (continuous batching). A stepper is a callable
(ids, positions, mask, cache) -> (last-token logits [B, V] fp32, cache) with the static helpers
select / pad_left / concat / trim_left for its cache (see DygraphStepper, InferenceStepper).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import UsageError
from .sampling import SamplingConfig, choose_token, filter_logits


class Row:
    """One sequence being generated.

    on_token(token) -> bool is called for each accepted token; True ends the row (a stop string).
    on_finish(row) is called once when the row leaves the batch (finish_reason "stop" or "length")."""

    def __init__(self, prompt: list[int], cfg: SamplingConfig, on_token: Callable | None = None,
                 on_finish: Callable | None = None):
        self.prompt = [int(t) for t in prompt]
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.on_token, self.on_finish = on_token, on_finish
        self.counts = self.seen = None

    def start(self, vocab_size: int) -> None:
        self.counts = np.zeros([vocab_size], dtype="float64")
        self.seen = np.zeros([vocab_size], dtype=bool)
        self.seen[[t for t in self.prompt if 0 <= t < vocab_size]] = True

    def choose(self, logits: np.ndarray) -> int:
        return choose_token(filter_logits(logits, self.counts, self.cfg, self.seen), self.cfg, self.rng)

    def accept(self, token: int) -> bool:
        """Record `token`; False when the row is finished."""
        if token in self.cfg.stop_ids:
            self.finish_reason = "stop"
            return False
        self.tokens.append(token)
        self.counts[token] += 1
        self.seen[token] = True
        if self.on_token is not None and self.on_token(token):
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.cfg.max_new_tokens:
            self.finish_reason = "length"
        return self.finish_reason is None


def fit_prompt(prompt: list[int], cfg: SamplingConfig, context: int) -> list[int]:
    """Apply the over-long-prompt policy: the prompt plus max_new_tokens must fit the model's positions."""
    if not prompt:
        raise UsageError("the prompt is empty: it needs at least one token")
    if cfg.max_new_tokens >= context:
        raise UsageError(f"max_new_tokens {cfg.max_new_tokens} must be below the model's context {context} "
                         f"(max_position_embeddings)")
    room = context - cfg.max_new_tokens
    if len(prompt) <= room:
        return prompt
    if cfg.truncate == "left":
        return prompt[-room:]
    raise UsageError(f"prompt of {len(prompt)} tokens + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
                     f"context {context} (max_position_embeddings); shorten it, lower max_new_tokens or "
                     f"truncate left (--truncate left)")


class BatchDecoder:
    """Rows decoding together over one KV cache; see the module docstring."""

    def __init__(self, stepper, config, on_row_error: Callable | None = None):
        """on_row_error(row, err): set by the server. A decode step that raises is then run again row by row;
        rows that still fail leave the batch through it and the others go on. Without it the step raises."""
        self.stepper, self.config, self.on_row_error = stepper, config, on_row_error
        self.reset()

    def reset(self) -> None:
        self.rows: list[Row] = []
        self.cache = self.mask = self.positions = self.logits = None

    def add(self, rows: list[Row]) -> None:
        """Prefill `rows` (applying their prompt policy) and merge them into the running batch."""
        if not rows:
            return
        for r in rows:
            r.prompt = fit_prompt(r.prompt, r.cfg, self.config.max_position_embeddings)
            r.start(self.config.vocab_size)
        ids, mask, positions = left_pad([r.prompt for r in rows], rows[0].cfg.pad_token_id)
        logits, cache = self.stepper(ids, positions, mask, None)
        if not self.rows:
            self.cache, self.mask, self.positions, self.logits = cache, mask, positions[:, -1], logits
        else:
            self._merge(cache, mask, positions[:, -1], logits)
        self.rows.extend(rows)

    def run(self, rows: list[Row], on_added: Callable | None = None) -> list[Row]:
        """Decode `rows` to their end: add them all (an over-long prompt fails here), call on_added(), step
        until no row is left. The one loop of `generate`, `generate_text` and `pangu generate`; the server
        adds rows between steps instead (server/engine.py)."""
        self.add(rows)
        if on_added is not None:
            on_added()
        while self.rows:
            self.step()
        return rows

    def _merge(self, cache, mask, last_positions, logits) -> None:
        old, new = self.mask.shape[1], mask.shape[1]
        width = max(old, new)
        s = self.stepper
        self.cache = s.concat(s.pad_left(self.cache, width - old), s.pad_left(cache, width - new))
        self.mask = np.concatenate([_pad_mask(self.mask, width), _pad_mask(mask, width)], axis=0)
        self.positions = np.concatenate([self.positions, last_positions])
        self.logits = np.concatenate([self.logits, logits], axis=0)

    def step(self) -> None:
        """Choose one token for every row, drop finished rows, run the model on the chosen tokens."""
        chosen, keep = [], []
        for i, row in enumerate(self.rows):
            token = row.choose(self.logits[i])
            if row.accept(token):
                keep.append(i)
                chosen.append(token)
        finished = [r for i, r in enumerate(self.rows) if i not in set(keep)]
        if not keep:
            self.reset()
        else:
            self._keep(keep)
            self.positions = self.positions + 1
            self.mask = np.concatenate([self.mask, np.ones([len(keep), 1], dtype="int64")], axis=1)
            ids = np.asarray(chosen, dtype="int64")[:, None]  # [B, 1]
            try:
                self.logits, self.cache = self.stepper(ids, self.positions[:, None], self.mask, self.cache)
            except Exception:
                if self.on_row_error is None or len(self.rows) == 1:
                    raise
                self._step_row_by_row(ids)
        for r in finished:
            if r.on_finish is not None:
                r.on_finish(r)

    def _step_row_by_row(self, ids: np.ndarray) -> None:
        """The batched step failed: run it for each row alone ([1, 1] ids, its own cache slice); rows that
        fail again leave through on_row_error, the rest form the batch again (same order)."""
        s, ok, failed = self.stepper, [], []
        for i, row in enumerate(self.rows):
            try:
                logits, cache = s(ids[i:i + 1], self.positions[i:i + 1, None], self.mask[i:i + 1],
                                  s.select(self.cache, [i]))
                ok.append((i, logits, cache))
            except Exception as err:  # noqa: BLE001 - this row's own failure
                failed.append((row, err))
        if ok:
            keep = [i for i, _, _ in ok]
            self.rows = [self.rows[i] for i in keep]
            self.mask, self.positions = self.mask[keep], self.positions[keep]
            self.logits = np.concatenate([logits for _, logits, _ in ok], axis=0)  # [B', V]
            self.cache = ok[0][2]
            for _, _, cache in ok[1:]:
                self.cache = s.concat(self.cache, cache)
        else:
            self.reset()
        for row, err in failed:
            self.on_row_error(row, err)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) < len(self.rows):
            self.rows = [self.rows[i] for i in keep]
            self.cache = self.stepper.select(self.cache, keep)
            self.mask, self.positions, self.logits = self.mask[keep], self.positions[keep], self.logits[keep]
            unused = int(np.argmax(self.mask.any(axis=0)))  # leading columns no remaining row attends to
            if unused:
                self.cache = self.stepper.trim_left(self.cache, unused)
                self.mask = self.mask[:, unused:]


def _pad_mask(mask: np.ndarray, width: int) -> np.ndarray:
    return np.pad(mask, [(0, 0), (width - mask.shape[1], 0)])


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
