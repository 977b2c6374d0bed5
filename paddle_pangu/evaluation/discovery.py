"""Which tasks `pangu evaluate` runs, from which files: a paper task (or every paper task found under a
root, `--task paper`), the built-in reviews task, or a user's JSONL task; each with its evaluation examples
(optionally a seeded sample) and its demonstration pool."""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

from ..errors import DataError, UsageError


@dataclass
class TaskSelection:
    """What the user asked to evaluate (the `pangu evaluate` options of the same names)."""

    task: str = "reviews"
    data: str | None = None
    data_dir: str | None = None
    train: str | None = None
    shots: tuple = (0, 1)
    limit: int | None = None
    seed: int = 0
    labels: str | None = None
    template: str | None = None
    num_eval: int = 200

    @classmethod
    def from_options(cls, options) -> "TaskSelection":
        """From an object with attributes of the same names (an argparse Namespace)."""
        from dataclasses import fields

        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)})


def find_jobs(sel: TaskSelection) -> list:
    """[(TaskSpec, evaluation examples, demonstration pool or None)] for `sel` (DataError / UsageError: one line)."""
    from .tasks import TASKS

    if sel.task == "paper" or sel.task in TASKS:
        return _paper_tasks(sel)
    from .classification import as_task_spec

    task, pool, examples = as_task_spec(_classification(sel), sel.num_eval, sel.seed)
    return [(task, _limit(examples, sel.limit, sel.seed), pool)]


def _classification(sel: TaskSelection):
    from .tasks import BUILTIN_TASKS, jsonl_task

    if sel.task in BUILTIN_TASKS:
        return BUILTIN_TASKS[sel.task]()
    if not (sel.labels and sel.template):
        raise UsageError(f"--task {sel.task}: a JSONL task needs --labels and --template")
    return jsonl_task(sel.task, sel.labels.split(","), sel.template)


def _limit(examples: list, limit, seed: int) -> list:
    if limit is None or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))  # files are often sorted by label
    return [examples[i] for i in keep]


def _train_pool(task, sel: TaskSelection, eval_files: list):
    """Demonstrations: --train, else the task's train file in the folder of its evaluation file."""
    from .tasks import load_examples, resolve_files

    if max(sel.shots) == 0:
        return []
    if sel.train and sel.task != "paper":
        return load_examples(task, resolve_files(task, sel.train, "train"), sel.seed)
    try:
        return load_examples(task, resolve_files(task, os.path.dirname(eval_files[0]), "train"), sel.seed)
    except DataError as exc:
        if sel.task == "paper":  # run what the files allow: zero-shot only
            print(f"zero-shot only: {exc}", file=sys.stderr)
            return None
        raise DataError(f"{exc}; or give the demonstrations with --train FILE") from None


def _paper_tasks(sel: TaskSelection) -> list:
    """(task, eval examples, demonstration pool) for every paper task whose files are found."""
    from .tasks import PAPER_ORDER, get_task, load_examples, resolve_files

    names = PAPER_ORDER if sel.task == "paper" else [sel.task]
    root = sel.data_dir if sel.task == "paper" else (sel.data or sel.data_dir)
    if root is None:
        task = get_task(names[0])
        raise DataError(f"task {task.name}: give --data FILE_OR_DIR with {' or '.join(task.eval_files)} "
                        f"(published at {task.source})")
    found = []
    for name in names:
        task = get_task(name)
        try:
            files = resolve_files(task, root)
        except DataError as exc:
            if sel.task != "paper":
                raise
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        examples = _limit(load_examples(task, files, sel.seed), sel.limit, sel.seed)
        found.append((task, examples, _train_pool(task, sel, files)))
    if not found:
        raise DataError(f"--data-dir {root}: none of the paper's task files found (see docs/EVALUATION.md)")
    return found
