"""`pangu evaluate`: perplexity on held-out data and zero/one/few-shot classification."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or preset:NAME")
    p.add_argument("--task", default="reviews", help="builtin task (reviews) or a JSONL file with text/label")
    p.add_argument("--labels", default=None, help="comma-separated verbalised labels (JSONL tasks)")
    p.add_argument("--template", default=None, help="template with {text} and a final {label} (JSONL tasks)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1], help="demonstrations per query, e.g. 0 1 4")
    p.add_argument("--num-eval", type=int, default=200, help="evaluation examples (label-balanced)")
    p.add_argument("--perplexity", default=None, metavar="DATA_DIR", help="also report perplexity on this prepared dataset's test split")
    p.add_argument("--ppl-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON only")


def _task(args):
    from .tasks import BUILTIN_TASKS, jsonl_task

    if args.task in BUILTIN_TASKS:
        return BUILTIN_TASKS[args.task]()
    if not (args.labels and args.template):
        raise SystemExit(f"--task {args.task}: a JSONL task needs --labels and --template")
    return jsonl_task(args.task, args.labels.split(","), args.template)


def run(args) -> int:
    from ..inference.loading import load_model_and_tokenizer
    from .fewshot import evaluate_classification

    model, tok = load_model_and_tokenizer(args.model, seed=args.seed)
    results = []
    if args.perplexity:
        from ..data import build_pretraining_datasets
        from .scoring import perplexity

        seq = model.config.max_position_embeddings
        test = build_pretraining_datasets([args.perplexity], None, seq, {"test": args.ppl_samples}, args.seed)["test"]
        results.append({"task": "perplexity", **perplexity(model, (test[i] for i in range(len(test))))})
    task = _task(args)
    for shots in args.shots:
        results.append(evaluate_classification(model, tok, task, shots, args.num_eval, args.seed, progress=not args.json))
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    print(f"{'task':<14}{'shots':>6}{'n':>6}{'accuracy / ppl':>16}")
    for r in results:
        value = f"{r['perplexity']:.2f}" if r["task"] == "perplexity" else f"{r['accuracy']:.3f} (chance {r['chance']:.2f})"
        print(f"{r['task']:<14}{r.get('shots', ''):>6}{r.get('examples', r.get('tokens', '')):>6}  {value}")
    return 0
