"""`pangu finetune`: supervised fine-tuning with the PaddleNLP Trainer."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (from train/convert) or preset:NAME")
    p.add_argument("--train", required=True, help="JSONL with prompt/response (or text) fields")
    p.add_argument("--eval", default=None, help="optional JSONL for evaluation loss")
    p.add_argument("--output", required=True)
    p.add_argument("--max-length", type=int, default=None, help="default: the model's max_position_embeddings")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--eval-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--report-to", default="visualdl", choices=["visualdl", "none"])
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--response-field", default="response")


def run(args) -> int:
    from ..inference.loading import load_model_and_tokenizer
    from .data import build_examples, read_jsonl
    from .trainer import FinetuneArgs, finetune

    model, tok = load_model_and_tokenizer(args.model, seed=args.seed)
    max_len = args.max_length or model.config.max_position_embeddings

    def load(path):
        pairs = read_jsonl(path, args.prompt_field, args.response_field)
        return build_examples(pairs, tok, max_len, model.config.eos_token_id)

    train, evals = load(args.train), (load(args.eval) if args.eval else [])
    if not train:
        raise SystemExit(f"{args.train}: no usable examples")
    fargs = FinetuneArgs(
        output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr,
        batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum, logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, seed=args.seed, report_to=args.report_to,
    )
    metrics = finetune(model, tok, train, evals, fargs)
    print(json.dumps(metrics, indent=2, default=float))
    return 0
