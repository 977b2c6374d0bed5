"""Fine-tuning through the real PaddleNLP `Trainer` (the one module that touches its API).

PLATFORM.md: the Paddle team moved LLM work to `paddleformers` (argument names
differ, e.g. tensor_model_parallel_size); keeping the Trainer in this module
makes a later switch one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class FinetuneArgs:
    """What `pangu finetune` needs; everything else keeps the PaddleNLP defaults."""

    output_dir: str
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.1  # REF "Training recipe"
    logging_steps: int = 10
    eval_steps: int | None = None
    seed: int = 42
    report_to: str = "visualdl"


def training_arguments(args: FinetuneArgs):
    from paddlenlp.trainer import TrainingArguments

    evaluate = args.eval_steps is not None
    return TrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, max_grad_norm=1.0, logging_steps=args.logging_steps,
        evaluation_strategy="steps" if evaluate else "no", eval_steps=args.eval_steps, save_strategy="no",
        seed=args.seed, report_to=[args.report_to] if args.report_to != "none" else [],
        logging_dir=os.path.join(args.output_dir, "visualdl"), remove_unused_columns=False, disable_tqdm=False,
    )


def finetune(model, tokenizer, train_examples, eval_examples, args: FinetuneArgs):
    """Train with PaddleNLP's Trainer, save model + tokenizer to args.output_dir; returns the Trainer's metrics."""
    from paddlenlp.trainer import Trainer

    from .data import SFTCollator

    trainer = Trainer(
        model=model, args=training_arguments(args), train_dataset=train_examples,
        eval_dataset=eval_examples or None, data_collator=SFTCollator(model.config.pad_token_id),
    )
    result = trainer.train()
    metrics = dict(result.metrics)
    if eval_examples:
        metrics.update(trainer.evaluate())
    model.save_pretrained(args.output_dir, safe_serialization=True)
    tokenizer.save_pretrained(args.output_dir)
    return metrics
