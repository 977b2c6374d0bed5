"""`pangu generate`: text continuation from a model directory (or a random preset) with a KV cache."""
from __future__ import annotations

import argparse
import os

from ..inference.loading import load_model_and_tokenizer, load_tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, or preset:NAME for a randomly initialised model")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--tokenizer", default=None, help="directory or vocab.model (default: model dir, then pcl-pangu)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)


def _is_export_dir(path: str) -> bool:
    from ..inference.export import META_FILE

    return os.path.exists(os.path.join(path, META_FILE))


def run(args) -> int:
    from ..inference import generate_text

    if _is_export_dir(args.model):  # `pangu export` output: run the real Paddle Inference predictor
        return _run_exported(args)
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, args.seed)
    cfg = _sampling(args, model.config)
    for prompt, text in zip(args.prompt, generate_text(model, tok, args.prompt, cfg)):
        print(f"{prompt}{text}")
    return 0


def _run_exported(args) -> int:
    from ..inference.export import InferenceStepper
    from ..inference.generation import decode_loop

    stepper = InferenceStepper(args.model)
    tok = load_tokenizer(args.model, args.tokenizer)
    prompts = [tok.encode_ids(p) for p in args.prompt]
    for prompt, ids in zip(args.prompt, decode_loop(stepper, stepper.config, prompts, _sampling(args, stepper.config))):
        print(f"{prompt}{tok.decode_ids(ids)}")
    return 0


def _sampling(args, config):
    from ..inference import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, seed=args.seed,
    )
