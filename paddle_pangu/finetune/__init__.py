"""Fine-tuning with the PaddleNLP Trainer."""
from .data import SFTCollator, build_examples, read_jsonl
from .trainer import FinetuneArgs, finetune

__all__ = ["SFTCollator", "build_examples", "read_jsonl", "FinetuneArgs", "finetune"]
