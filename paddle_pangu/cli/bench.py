"""`pangu bench`: speed measured as interleaved same-run ratios against baselines; a table, or JSON.

    pangu bench train generate --compare --hidden 512 --layers 4 --heads 8 --seq 256 --batch 4
    pangu bench all --compare --preset mini --json bench.json
    pangu bench parallel --rounds 3      # the main job's 2-process layout vs one process (not in `all`)

`--compare` adds the baselines (training: PaddleNLP GPTForCausalLM and, when torch is installed,
PyTorch + HF GPT2LMHeadModel; decode: HF generate) and the exported-predictor decode; without it only
PanGu's own figures are measured.
"""
from __future__ import annotations

import argparse
import json

from ..errors import UsageError

TARGETS = ("tokenize", "train", "generate", "scaling", "eval", "serve", "data", "parallel", "all")
ALL = ("train", "generate")
# defaults of the flags `parallel` takes from its base run YAML unless given (None = not given)
_DEFAULTS = {"preset": "mini", "seq": 256, "batch": 4, "steps": 1}
PARALLEL_STEPS = 6


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", default=list(ALL), choices=TARGETS,
                   help="what to measure (default: train generate; all = train generate)")
    p.add_argument("--compare", action="store_true", help="measure the baselines too, interleaved with ours")
    p.add_argument("--preset", default=None,
                   help="model size (default mini; parallel: the --config's); --hidden/--layers/--heads/--ffn/--vocab "
                        "override it")
    for name in ("hidden", "layers", "heads", "ffn", "vocab"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="default 4 (parallel: the --config's micro-batch)")
    p.add_argument("--seq", type=int, default=None, help="default 256 (parallel: the --config's data.seq_len)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each system once per round)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"train: steps per sample (default 1); parallel: `pangu train` steps per run (default "
                        f"{PARALLEL_STEPS}; the first is warm-up, not measured)")
    p.add_argument("--config", default=None,
                   help="parallel: the base run YAML whose layout is compared with one process "
                        "(default configs/pretrain/mini_cpu_mp2.yaml, the main job)")
    p.add_argument("--matmul-n", type=int, default=1024, help="fp32 GEMM size for the peak measurement")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--decode-batches", default="1,8", help="generate: comma-separated batch sizes")
    p.add_argument("--no-predictor", action="store_true", help="generate: skip the exported-predictor decode")
    p.add_argument("--clients", default="1,8", help="serve: comma-separated concurrent client counts")
    p.add_argument("--weights", default="fp32",
                   help="serve: comma-separated --weights modes (fp32,int8,bf16), one server each, interleaved")
    p.add_argument("--no-offline", action="store_true",
                   help="serve: skip the offline batch decode measured beside each client count")
    p.add_argument("--seqs", default="256,512,1024,2048", help="scaling: sequence lengths")
    p.add_argument("--tokens", type=int, default=2048, help="scaling: tokens per step (batch = tokens / seq)")
    p.add_argument("--mb", type=float, default=2.0, help="tokenize: corpus size in MB")
    p.add_argument("--workers", type=int, default=None, help="tokenize: worker processes")
    p.add_argument("--ray-workers", default="1,2", help="data: Ray cluster sizes to measure (CPUs)")
    p.add_argument("--json", default=None, help="write the JSON results to this file ('-': print it instead of the table)")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: expected integers >= 1")
    return values


def shape_from_args(args, seq: int | None = None, batch: int | None = None):
    from ..config import get_preset
    from ..bench.train_bench import Shape

    try:
        base = get_preset(args.preset)
    except (KeyError, ValueError) as err:
        raise UsageError(f"--preset {args.preset!r}: {err}") from None
    hidden = args.hidden or base.hidden_size
    shape = Shape(hidden=hidden, layers=args.layers or base.num_layers, heads=args.heads or base.num_attention_heads,
                  ffn=args.ffn or (4 * hidden if args.hidden else base.ffn_hidden_size),
                  vocab=args.vocab or base.vocab_size, seq=seq or args.seq, batch=batch or args.batch)
    if shape.hidden % shape.heads:
        raise UsageError(f"--hidden {shape.hidden} is not divisible by --heads {shape.heads}")
    if min(shape.seq, shape.batch, args.rounds, args.steps) < 1:
        raise UsageError("--seq, --batch, --rounds and --steps must be >= 1")
    return shape


def _tokenize(args) -> dict:
    from ..bench.tokenize_bench import run_benchmark

    r = run_benchmark(args.mb, args.workers)
    same = "identical to" if r["identical"] else "DIFFERENT from"
    return {"name": "tokenize", "config": f"{args.mb} MB, token ids {same} the reference's", "detail": r,
            "ratios": {"pipeline/reference": {"wall": {"median": r.get("speedup")}}}}


def _scaling(args) -> dict:
    from ..bench.train_bench import bench_train

    points = []
    for seq in _ints(args.seqs, "--seqs"):
        if args.tokens % seq:
            raise UsageError(f"--tokens {args.tokens} is not a multiple of sequence length {seq}")
        r = bench_train(shape_from_args(args, seq, args.tokens // seq), args.rounds, args.steps, args.compare,
                        args.matmul_n)
        points.append({"seq": seq, **r})
    return {"name": "scaling", "config": f"{args.tokens} tokens/step", "points": points}


def _parallel(args, given: dict) -> dict:
    from ..bench.parallel_bench import bench_parallel

    dims = {k: getattr(args, k) for k in ("hidden", "layers", "heads", "ffn", "vocab")}
    for flag, value in {"seq": given.get("seq"), "batch": given.get("batch"), **dims}.items():
        if value is not None and value < 1:
            raise UsageError(f"--{flag} {value}: expected >= 1")
    return bench_parallel(args.config, given.get("steps", PARALLEL_STEPS), args.rounds, args.compare,
                          given.get("preset"), dims, given.get("seq"), given.get("batch"))


def _measure(args, target: str, given: dict | None = None) -> dict:
    if target == "parallel":  # multi-process layout vs one process, `pangu train` runs (bench/parallel_bench.py)
        return _parallel(args, given or {})
    if target == "eval":  # candidate scoring, batched vs one sequence at a time (bench/eval_bench.py)
        from ..bench.eval_bench import bench_eval

        return bench_eval(args.preset, args.rounds)
    if target == "serve":  # pangu serve under N concurrent streaming clients (bench/serve_bench.py)
        from ..bench.serve_bench import bench_serve

        clients = _ints(args.clients, "--clients")
        weights = [w.strip() for w in args.weights.split(",") if w.strip()]
        return bench_serve(args.preset, clients, args.prompt_len, args.new_tokens, args.rounds, max(clients),
                           weights=weights or ["fp32"], offline=not args.no_offline)
    if target == "tokenize":
        return _tokenize(args)
    if target == "data":  # prepare-data, local vs Ray engine (bench/data_bench.py)
        from ..bench.data_bench import bench_data

        return bench_data(args.mb, args.workers or 2, _ints(args.ray_workers, "--ray-workers"), rounds=args.rounds)
    if target == "train":
        from ..bench.train_bench import bench_train

        return bench_train(shape_from_args(args), args.rounds, args.steps, args.compare, args.matmul_n)
    if target == "generate":
        from ..bench.decode_bench import bench_generate

        return bench_generate(shape_from_args(args), _ints(args.decode_batches, "--decode-batches"),
                              args.prompt_len, args.new_tokens, args.rounds, args.compare,
                              args.compare and not args.no_predictor)
    return _scaling(args)


def _fill_defaults(args) -> dict:
    """The flags of _DEFAULTS the user gave ({name: value}); the others get their default."""
    given = {k: getattr(args, k) for k in _DEFAULTS if getattr(args, k, None) is not None}
    for k, v in _DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return given


def loads_models(args) -> bool:
    """False for `pangu bench data` alone: it builds no model, and measures the data pipeline as
    `pangu prepare-data` runs it (without paddle imported, so its worker pools fork)."""
    return any(t != "data" for t in (args.targets or ALL))


def run(args) -> int:
    from ..bench.report import table

    given = _fill_defaults(args)
    targets = []
    for t in args.targets or ALL:
        for name in (ALL if t == "all" else (t,)):
            if name not in targets:
                targets.append(name)
    results = [_measure(args, t, given) for t in targets]
    text = json.dumps(results, indent=2, default=float)
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            f.write(text)
    from ..bench.eval_bench import table as eval_table

    from ..bench.serve_bench import table as serve_table

    from ..bench.data_bench import table as data_table

    from ..bench.parallel_bench import table as parallel_table

    rest = [r for r in results if r["name"] not in ("eval", "serve", "data", "parallel")]
    lines = ([table(rest)] if rest else []) + [eval_table(r) for r in results if r["name"] == "eval"]
    lines += [serve_table(r) for r in results if r["name"] == "serve"]
    lines += [data_table(r) for r in results if r["name"] == "data"]
    lines += [parallel_table(r) for r in results if r["name"] == "parallel"]
    print(text if args.json == "-" else "\n".join(lines))
    if any(r["name"] == "tokenize" and not r["detail"]["identical"] for r in results):
        from ..errors import DataError

        # a speed figure for output that is not the reference's is no figure: fail the command
        raise DataError("tokenize: the pipeline's token ids differ from the reference's (see the table above)")
    return 0
