"""`pangu generate`: text continuation from a model directory (or a random preset) with a KV cache."""
from __future__ import annotations

import argparse
import os


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, seed: int = 0):
    """A model directory (config.json + weights) or `preset:NAME` (random init) plus the PanGu tokenizer."""
    import paddle

    from ..config import get_preset
    from ..model import PanGuForCausalLM
    from ..tokenizer import PanGuTokenizer

    if model.startswith("preset:"):
        paddle.seed(seed)
        net = PanGuForCausalLM(get_preset(model.split(":", 1)[1]))
    elif os.path.isdir(model) and os.path.exists(os.path.join(model, "config.json")):
        net = PanGuForCausalLM.from_pretrained(model)
    else:
        raise FileNotFoundError(
            f"--model {model!r}: expected a model directory containing config.json "
            f"(from `pangu train`, `pangu convert` or save_pretrained) or preset:NAME"
        )
    net.eval()
    tok_dir = tokenizer or (model if os.path.isdir(model) and os.path.exists(os.path.join(model, "vocab.model")) else None)
    tok = PanGuTokenizer.from_pretrained(tok_dir) if tok_dir else PanGuTokenizer.from_default()
    return net, tok


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
    from ..inference import SamplingConfig, generate_text

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
    from ..tokenizer import PanGuTokenizer

    stepper = InferenceStepper(args.model)
    tok_dir = args.tokenizer or (args.model if os.path.exists(os.path.join(args.model, "vocab.model")) else None)
    tok = PanGuTokenizer.from_pretrained(tok_dir) if tok_dir else PanGuTokenizer.from_default()
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
