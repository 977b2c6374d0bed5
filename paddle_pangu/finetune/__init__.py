"""Fine-tuning with the PaddleNLP Trainer: arguments, rows + chat template, examples, LoRA, built-in data."""
from .arguments import DataArguments, ModelArguments, parse_finetune_args
from .data import read_jsonl, read_rows, render_chat
from .examples import SFTCollator, SFTExample, TruncationStats, build_examples, pack_examples
from .trainer import build_datasets, run_finetune

__all__ = [
    "DataArguments", "ModelArguments", "parse_finetune_args", "read_jsonl", "read_rows", "render_chat",
    "SFTCollator", "SFTExample", "TruncationStats", "build_examples", "pack_examples", "build_datasets",
    "run_finetune",
]
