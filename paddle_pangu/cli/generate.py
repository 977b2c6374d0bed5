"""`pangu generate`: text continuation from a model directory, a random preset or a `pangu export` directory
(Paddle Inference predictor), streamed to the terminal for a single prompt."""
from __future__ import annotations

import argparse
import sys

from ..inference.export import DEVICES
from ..inference.quantize import WEIGHTS


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--do-sample", action="store_true", help="sample (default greedy); --temperature 0 is greedy too")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL / HF repetition penalty (1 = off)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeat for several); cut from the output")
    p.add_argument("--stop-id", type=int, action="append", default=[], help="extra stop token id (repeat)")
    p.add_argument("--seed", type=int, default=None,
                   help="with --do-sample: row i samples with seed SEED+i (default: a fresh random SEED per run, "
                        "printed so the run can be repeated)")
    p.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="a prompt longer than the context minus --max-new-tokens: error (default) or keep its end")


def add_weights_argument(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--weights", choices=WEIGHTS, default=default,
                   help="weight precision for CPU decoding: fp32, int8 (weight-only, per-channel, quantised once at "
                        "load) or bf16 (rounded to bfloat16 once at load, fp32 arithmetic, any x86-64 CPU); an export "
                        "directory runs the weights it was exported with")


def add_nproc_arguments(p: argparse.ArgumentParser) -> None:
    """`--nproc N` / `--launch-logs DIR` of evaluate, generate and serve (inference/tensor_parallel.py)."""
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="run the model split N ways (tensor parallel) on N processes of this machine, started "
                        "with paddle.distributed.launch; rank 0 reads the inputs and writes the outputs "
                        "(default 1: one process)")
    p.add_argument("--launch-logs", default=None, metavar="DIR",
                   help="with --nproc > 1: where the launcher and each rank write their logs (default: a new "
                        "temporary directory, named on stderr)")


def launched(command: str, args, weights: str | None = None) -> "int | None":
    """The exit code of `--nproc N > 1` run under the launcher (this is the launching process), or None when
    this process runs the command itself (one process, or a launched rank)."""
    from ..inference.tensor_parallel import check_model_for_nproc, launched_world

    world, _ = launched_world()
    if world > 1:
        return None
    check_model_for_nproc(args.model, args.nproc, weights)
    if args.nproc == 1:
        return None
    from .. import cli
    from ..training.launch import launch_for

    return launch_for(command, cli.ARGV, args.nproc, args.launch_logs)


def open_tensor_parallel(args):
    """In a launched rank: (model, DygraphStepper, Channel, rank) for this rank's part of --model."""
    from ..inference.generation import DygraphStepper
    from ..inference.tensor_parallel import Channel, init_tensor_parallel, load_rank_model

    topo = init_tensor_parallel(args.device)
    net, tok = load_rank_model(args.model, topo.context, seed=0, tokenizer=args.tokenizer)
    return net, tok, DygraphStepper(net, frozen=True), Channel(topo.group("mp")), topo.mp_rank


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model directory, `pangu export` directory, or preset:NAME for a randomly initialised model")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--tokenizer", default=None, help="directory or vocab.model (default: model dir, then pcl-pangu)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    add_weights_argument(p)
    p.add_argument("--no-stream", action="store_true", help="print a single prompt's text at the end, not as it grows")
    add_sampling_arguments(p)
    add_nproc_arguments(p)


def check_arguments(args) -> None:
    """What argparse cannot see, refused before the model is loaded (one line, exit 2)."""
    from ..errors import UsageError

    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed {args.seed}: expected an integer in [0, 2^63)")
    for i, prompt in enumerate(args.prompt):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # invalid UTF-8 bytes in argv arrive as lone surrogates
            raise UsageError(f"--prompt #{i + 1}: not valid UTF-8 text (byte/character at offset {exc.start}); "
                             "pass the prompt as UTF-8") from None


def sampling_seed(args) -> int:
    """Row 0's seed: --seed, else (sampling) a fresh one, printed to stderr so the run can be repeated."""
    if args.seed is not None:
        return args.seed
    if not args.do_sample or args.temperature == 0:
        return 0  # greedy: the seed is unused
    import secrets

    seed = secrets.randbelow(2**31)
    print(f"pangu generate: sampling with --seed {seed} (row i uses {seed}+i); pass it to repeat this output",
          file=sys.stderr, flush=True)
    return seed


def run(args) -> int:
    from ..inference.backend import open_backend

    check_arguments(args)
    code = launched("generate", args, args.weights)
    if code is not None:
        return code
    from ..inference.tensor_parallel import launched_world

    if launched_world()[0] > 1:
        return _run_rank(args)
    # one prompt (batch 1) on an export directory: the predictor on one math thread. Measured with
    # `python tools/predictor_threads.py` (docs/INT8.md): at batch 1 a second thread bought no
    # speed and cost 1.4-2.6x the CPU-seconds per token; batches keep Paddle's default (all cores).
    threads = 1 if len(args.prompt) == 1 else 0
    # preset:NAME weights always from seed 0, so the printed sampling seed alone repeats a run
    stepper, config, tok = open_backend(args.model, args.device, args.tokenizer, threads=threads, seed=0,
                                        weights=args.weights)
    return _decode(args, stepper, config, tok)


def _run_rank(args) -> int:
    """One rank of `--nproc N`: rank 0 decodes (its steps mirrored to the others), the others follow."""
    from ..inference.tensor_parallel import LeaderStepper, follow

    net, tok, stepper, channel, rank = open_tensor_parallel(args)
    if rank != 0:
        follow(net, stepper, channel)
        return 0
    leader = LeaderStepper(stepper, channel)
    try:
        return _decode(args, leader, net.config, tok)
    finally:
        leader.close()


def _decode(args, stepper, config, tok) -> int:
    from ..inference.decoding import BatchDecoder, Row
    from ..inference.sampling import SamplingConfig
    from ..inference.streaming import TextStream

    seed = sampling_seed(args)
    live = len(args.prompt) == 1 and not args.no_stream
    streams = [TextStream(tok, args.stop) for _ in args.prompt]

    def echo(stream):
        def on_token(token):
            delta = stream.push(token)
            print(delta, end="", flush=True)
            return stream.stopped
        return on_token

    # each row its own RNG stream: identical prompts in one batch get different samples
    rows = [Row(tok.encode_ids(p), SamplingConfig.from_options(args, config, stop_token_ids=tuple(args.stop_id),
                                                               seed=seed + i), echo(s) if live else s.push_stops)
            for i, (p, s) in enumerate(zip(args.prompt, streams))]
    show_prompt = (lambda: print(args.prompt[0], end="", flush=True)) if live else None
    BatchDecoder(stepper, config).run(rows, on_added=show_prompt)  # an over-long prompt fails before the print
    if live:
        print(streams[0].flush(), flush=True)
        return 0
    for prompt, stream in zip(args.prompt, streams):
        print(f"{prompt}{stream.text}")
    sys.stdout.flush()
    return 0
