"""Evaluation as in the paper: perplexity and zero/one/few-shot template scoring."""
from .fewshot import evaluate_classification
from .scoring import candidate_losses, perplexity
from .tasks import BUILTIN_TASKS, ClassificationTask, jsonl_task, reviews_task

__all__ = ["evaluate_classification", "candidate_losses", "perplexity", "BUILTIN_TASKS", "ClassificationTask",
           "jsonl_task", "reviews_task"]
