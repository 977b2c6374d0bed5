"""`pangu` console script: the top floor of the package, every command in this one `cli/` package.

`COMMANDS` maps each subcommand to its module here (`cli/train.py`, `cli/evaluate.py`, ...), which defines
`add_arguments(parser)` and `run(args) -> int | None` and turns options into calls of the library
packages below it; nothing in the library imports this package (tests/unit/test_architecture.py). The
modules are imported lazily so `pangu --help` stays fast. `python -m paddle_pangu.cli` runs `main`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

# Import-time noise from paddle / setuptools that says nothing about the user's run.
for _message in ("No ccache found", "Setuptools is replacing distutils"):
    warnings.filterwarnings("ignore", message=_message)
logging.getLogger("datasets").setLevel(logging.WARNING)  # "PyTorch version ... available" on paddlenlp import

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("paddle_pangu.cli.info", "versions, devices and where the tokenizer files were found"),
    "tokenize": ("paddle_pangu.cli.tokenize", "tokenize text with the PanGu tokenizer (jieba + SentencePiece)"),
    "prepare-data": ("paddle_pangu.cli.prepare_data", "clean, filter, dedup, tokenize and pack a corpus into .bin/.idx"),
    "train": ("paddle_pangu.cli.train", "pretrain with fleet hybrid parallelism (dp/mp/pp/sharding/recompute)"),
    "finetune": ("paddle_pangu.cli.finetune", "supervised fine-tuning with the PaddleNLP Trainer"),
    "merge-lora": ("paddle_pangu.cli.merge_lora", "fold LoRA adapters from `pangu finetune --lora` into a plain model directory"),
    "generate": ("paddle_pangu.cli.generate", "generate text (streamed) from a model or export directory"),
    "evaluate": ("paddle_pangu.cli.evaluate", "perplexity and zero/one/few-shot classification (paper protocol)"),
    "plan": ("paddle_pangu.cli.plan", "size dp/mp/pp/sharding/recompute layouts for a cluster"),
    "bench": ("paddle_pangu.cli.bench", "benchmarks vs same-run baselines (tokenize, train, generate); JSON + table"),
    "export": ("paddle_pangu.cli.export", "export prefill/decode graphs for the Paddle Inference predictor"),
    "serve": ("paddle_pangu.cli.serve", "OpenAI-compatible HTTP server with streaming, batching and a web page"),
    "convert": ("paddle_pangu.cli.convert", "convert MindSpore / Megatron / HF checkpoints to a model directory"),
    "reshard": ("paddle_pangu.cli.reshard", "split or merge checkpoints between mp/pp layouts"),
}


ARGV: list[str] = []  # the arguments of the running command (set by main)

# commands that load models through PaddleNLP anyway (their INFO logging is silenced)
LOADS_MODELS = {"train", "generate", "evaluate", "finetune", "merge-lora", "export", "convert", "reshard", "bench", "serve"}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pangu", description="PanGu-alpha on PaddlePaddle")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            _load(name).add_arguments(p)
            if name in LOADS_MODELS and "--trust-pickle" not in p._option_string_actions:
                p.add_argument("--trust-pickle", action="store_true", dest="_pangu_trust_pickle",
                               help="allow unpickling .pdparams/.pdopt files that hold more than arrays "
                                    "(only for files you trust; same as PANGU_TRUST_PICKLE=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from paddle_pangu import runtime

    runtime.apply()  # per-CPU math-library environment, before anything imports paddle
    argv = list(sys.argv[1:] if argv is None else argv)
    from paddle_pangu import cli as this  # the package module, also under `python -m paddle_pangu.cli`

    this.ARGV = list(argv)  # what `--nproc N` re-runs in each launched process (training/launch.py)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        build_parser().parse_args(argv)  # argparse prints the valid choices and exits 2
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from paddle_pangu.errors import PanGuError
    from paddle_pangu.io.safe_load import safe_paddle_load, trust_pickle

    trust_pickle(bool(getattr(args, "trust_pickle", False) or vars(args).pop("_pangu_trust_pickle", False)))
    try:
        module = _load(args.command)
        # a command that can load no model imports neither paddle nor paddlenlp here: with paddle loaded the
        # data pipeline's worker pools must spawn (and re-load the segmenter) instead of fork
        # (data/pipeline.start_method); prepare-data guards its one model load itself (quality.load_causal_lm)
        loads = args.command in LOADS_MODELS and getattr(module, "loads_models", lambda _: True)(args)
        if loads:
            _quiet_paddlenlp()
        guard = safe_paddle_load() if loads else contextlib.nullcontext()
        with guard:  # no pickle is unpickled beyond arrays unless --trust-pickle
            result = module.run(args)
    except PanGuError as err:
        if os.environ.get("PANGU_DEBUG") == "1":
            raise
        message = " ".join(str(err).split("\n")).strip() or type(err).__name__
        print(f"pangu {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


def _quiet_paddlenlp() -> None:
    """PaddleNLP logs every from_pretrained step at INFO; keep the console for our own progress lines.
    Only for commands that import paddlenlp anyway (the others stay fast); PANGU_VERBOSE=1 keeps it."""
    if os.environ.get("PANGU_VERBOSE") != "1":
        from paddlenlp.utils.log import logger

        logger.set_level("WARNING")
