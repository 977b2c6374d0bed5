"""What a task is: a declarative record (docs/REFERENCE.md "Evaluation protocol").

A `TaskSpec` says where the task's published files are, how to turn a file
into `Example`s, how to render an example as text, how it is scored and what
the paper's 2.6B zero-shot number is. The scoring machinery (prompting.py,
scoring.py, runner.py) knows nothing about any particular task.

Two kinds, as the paper (REF "Classification-like tasks" / "Generation tasks"):
- `candidates`: every candidate fills the template; the candidate whose tokens
  after the shared prefix have the lowest mean LM loss wins; metric accuracy.
- `generation`: the prompt is decoded with the task's decoding settings and the
  text is scored against the references (EM/F1, Rouge-1 or cloze accuracy).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Example:
    """One evaluation item.

    fields: values for the template (`passage`, `question`, `sentence1`, ...).
    candidates: candidate strings (candidate tasks); `gold` indexes the right one.
    references: acceptable answers (generation tasks).
    passage_key: the field the over-long policy may truncate from the left.
    uid: the id in the published file (for the per-sample log).
    """

    fields: dict
    candidates: list[str] | None = None
    gold: int | None = None
    references: list[str] | None = None
    passage_key: str | None = None
    uid: str = ""


@dataclass
class Decoding:
    """Generation settings of one task (REF "Decoding per task"); top_k 1 means greedy."""

    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 16

    @property
    def do_sample(self) -> bool:
        return self.top_k != 1


@dataclass
class TaskSpec:
    """A task of the paper's table.

    name: lower-case CLI name.
    kind: "candidates" or "generation".
    eval_files / train_files: published file names, first found wins (looked up in --data DIR).
    folders: sub-folders of `--data-dir` that may hold the files (`--task paper`).
    read: path -> list of raw records (a loader from evaluation/loaders.py).
    build: (records, seed) -> list[Example] (candidate sets, label words).
    render: (example, candidate index or None) -> text. For candidate tasks the
      full text with that candidate; for generation tasks, with None, the prompt,
      and with 0 the prompt followed by the first reference (a demonstration).
    metric: "accuracy", "em_f1", "rouge1" or "cloze_accuracy".
    paper: the paper's 2.6B zero-shot numbers in percent (REF "Paper Table 10").
    source: where a user gets the files.
    """

    name: str
    kind: str
    eval_files: tuple[str, ...]
    train_files: tuple[str, ...]
    folders: tuple[str, ...]
    read: Callable[[str], list]
    build: Callable[[list, int], list[Example]]
    render: Callable[[Example, int | None], str]
    metric: str
    source: str
    paper: dict = field(default_factory=dict)
    decoding: Decoding | None = None

    def __post_init__(self):
        if self.kind not in ("candidates", "generation"):
            raise ValueError(f"task {self.name}: kind must be candidates or generation, got {self.kind!r}")
        if self.kind == "generation" and self.decoding is None:
            raise ValueError(f"task {self.name}: a generation task needs decoding settings")


def fill(template: str, **values) -> str:
    """`$name` substitution as the reference writes its templates (REF "Templates")."""
    out = template
    for key in sorted(values, key=len, reverse=True):  # $S1 before $S
        out = out.replace("$" + key, str(values[key]))
    return out
