"""K-shot prompts and the over-long policy (docs/REFERENCE.md "Zero/one/few-shot").

REF: zero/one/few-shot = 0/1/K demonstrations concatenated before the query.
Demonstrations are drawn from the task's train file with an RNG seeded by
(seed, shots, example index), never the query itself (same id or same text),
and each is rendered with its gold answer; they are joined with a newline.

Over-long policy (ours; REF gives none): while the longest candidate (or the
prompt plus `max_new_tokens`) exceeds the context, drop demonstrations, the
one farthest from the query first; then truncate the example's passage from
the left; as a last resort cut the token ids from the left (every candidate
by the same count, so the shared prefix stays shared). Each step is counted.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field

from ..errors import UsageError
from .tasks.base import Example, TaskSpec

DEMO_SEPARATOR = "\n"


@dataclass
class Prompt:
    """The texts and token ids fed to the model for one example, and what the policy did to them."""

    texts: list[str]
    token_ids: list[list[int]]
    shots: int
    demos_dropped: int = 0
    passage_chars_cut: int = 0
    tokens_cut: int = 0
    demo_ids: list[str] = field(default_factory=list)


def sample_demos(pool: list[Example], query: Example, k: int, seed: int, index: int, task: TaskSpec) -> list[Example]:
    """k demonstrations from `pool`, none equal to the query (by id or by rendered answer text)."""
    if k == 0:
        return []
    own = render_demo(task, query)
    allowed = [d for d in pool if not (d.uid and d.uid == query.uid) and render_demo(task, d) != own]
    if len(allowed) < k:
        raise UsageError(f"task {task.name}: {k} shots requested but the train file has only {len(allowed)} "
                         f"demonstrations that are not the query")
    return random.Random(f"{seed}:{k}:{index}").sample(allowed, k)


def render_demo(task: TaskSpec, ex: Example) -> str:
    return task.render(ex, ex.gold if task.kind == "candidates" else 0)


def render_query(task: TaskSpec, ex: Example) -> list[str]:
    if task.kind == "candidates":
        return [task.render(ex, c) for c in range(len(ex.candidates))]
    return [task.render(ex, None)]


def _encode(tokenizer, prefix: str, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode_ids(prefix + t) for t in texts]


def _cut_passage(ex: Example, chars: int) -> Example:
    out = copy.copy(ex)
    out.fields = dict(ex.fields)
    out.fields[ex.passage_key] = ex.fields[ex.passage_key][chars:]
    return out


def build_prompt(task: TaskSpec, ex: Example, demos: list[Example], tokenizer, max_tokens: int) -> Prompt:
    """Demonstrations + query, made to fit `max_tokens` by the over-long policy above."""
    demos = list(demos)
    prefix = "".join(render_demo(task, d) + DEMO_SEPARATOR for d in demos)
    ids = _encode(tokenizer, prefix, render_query(task, ex))
    dropped = 0
    while demos and max(map(len, ids)) > max_tokens:
        demos.pop(0)
        dropped += 1
        prefix = "".join(render_demo(task, d) + DEMO_SEPARATOR for d in demos)
        ids = _encode(tokenizer, prefix, render_query(task, ex))
    cut_chars, query = 0, ex
    passage = ex.fields.get(ex.passage_key, "") if ex.passage_key else ""
    while max(map(len, ids)) > max_tokens and cut_chars < len(passage):
        excess = max(map(len, ids)) - max_tokens
        cut_chars = min(len(passage), cut_chars + max(1, math.ceil(excess * len(passage) / max(1, len(ids[0])))))
        query = _cut_passage(ex, cut_chars)
        ids = _encode(tokenizer, prefix, render_query(task, query))
    texts = [prefix + t for t in render_query(task, query)]
    tokens_cut = max(0, max(map(len, ids)) - max_tokens)
    if tokens_cut:
        ids = [s[tokens_cut:] for s in ids]
    return Prompt(texts, ids, shots=len(demos), demos_dropped=dropped, passage_chars_cut=cut_chars,
                  tokens_cut=tokens_cut, demo_ids=[d.uid for d in demos])
