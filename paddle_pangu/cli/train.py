"""`pangu train`: pretrain from a run YAML, alone or under paddle.distributed.launch.

    pangu train --config configs/pretrain/mini_cpu_mp2.yaml
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py --config ...
    pangu train --config X.yaml --set train.max_steps=20 --set optim.lr=1e-3
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="run YAML (configs/pretrain/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a YAML field, e.g. train.max_steps=20 (repeatable; value parsed as YAML)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu", "npu"), default=None,
                        help="overrides train.device")
    parser.add_argument("--output-dir", default=None, help="overrides train.output_dir")
    parser.add_argument("--max-steps", type=int, default=None, help="overrides train.max_steps")
    parser.add_argument("--stop-after-steps", type=int, default=None, metavar="N",
                        help="checkpoint and exit once step N is done (the schedule still spans train.max_steps); "
                             "rerun with checkpoint.resume=auto to continue")
    parser.add_argument("--force-resume", action="store_true",
                        help="resume even though the checkpoint's run config differs in more than max_steps / "
                             "logging / eval settings (the differences are logged)")
    parser.add_argument("--reshard", action="store_true",
                        help="resume a checkpoint written by another dp / mp / pp / sharding layout: model, optimizer "
                             "moments, master weights, scheduler and loss scaler are converted to this layout "
                             "(same global batch; RNGs reseeded from train.seed and the step)")
    parser.add_argument("--evaluate", metavar="MODEL_DIR", default=None,
                        help="no training: print the validation perplexity of a consolidated model directory "
                             "(e.g. <output_dir>/final_model) on this run's validation batches, in one process")
    parser.add_argument("--check-only", action="store_true",
                        help="validate the config against the launched world size and exit")
    parser.add_argument("--nproc", type=int, default=None, metavar="N",
                        help="start paddle.distributed.launch with N processes on this machine (quiet: the "
                             "launcher's output goes to <output_dir>/launch_logs/, rank 0's lines to the console)")
    parser.add_argument("--verbose", action="store_true", help="with --nproc: show the launcher's whole output")
    parser.add_argument("--parallel", choices=("auto",), default=None,
                        help="auto: replace the YAML's layout by the planner's fastest that fits the world size "
                             "(same global batch; on CPU the measured cpu preset); the choice is logged")


PLANNED_ENV = "PANGU_PLANNED_PARALLEL"  # --parallel auto: the launching process's chosen layout, for its workers


def _load_config(args, world: int = 1):
    """(run config, the `parallel={...}` layout override --parallel auto applied or None): the YAML with the
    command-line overrides applied (and, with --parallel auto, the planned layout).

    The YAML file is read once; with --parallel auto the planner sees the config built from it, and the
    chosen layout is applied to the same mapping. Workers of `pangu train --nproc N` take the layout the
    launching process chose (PLANNED_ENV) instead of planning again."""
    import copy
    import os

    from ..training.run_config import apply_overrides, read_run_mapping, run_config_from_dict

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if getattr(args, "force_resume", False):
        overrides.append("checkpoint.force_resume=true")
    if getattr(args, "reshard", False):
        overrides.append("checkpoint.reshard=true")
    data = read_run_mapping(args.config, overrides)
    layout = None
    if getattr(args, "parallel", None) == "auto":
        layout = os.environ.get(PLANNED_ENV) if world > 1 else None  # set only in the workers' environment
        if layout is None:
            from paddle_pangu.planner.auto import override_for

            layout, line = override_for(run_config_from_dict(copy.deepcopy(data), source=args.config), world)
            if os.environ.get("PADDLE_TRAINER_ID", "0") == "0":
                print(line, flush=True)
        data = apply_overrides(data, [layout])
    return run_config_from_dict(data, source=args.config), layout


def run(args) -> int:
    from paddle_pangu.parallel.topology import launched_world_size

    world = launched_world_size()
    if args.nproc is not None and world == 1 and not args.evaluate:
        return _launch(args)
    # config, layout, data, device and AMP errors are PanGuErrors: cli.main prints them as one line, exit 2
    cfg, _ = _load_config(args, world)
    _check_launched(args, cfg, world)
    # The one check of the run in this process, before any process group exists; its result is handed on.
    # A worker of --nproc N checks again (once): it gets the user's arguments, not the launcher's objects, and
    # a job started with `python -m paddle.distributed.launch tools/train.py` has no launching `pangu` at all.
    validated = cfg.validate(None if args.evaluate else world)
    if args.check_only:
        print(f"{args.config}: valid for world size {world}")
        return 0
    if args.evaluate:
        from ..training.evaluate import evaluate_model_dir

        result = evaluate_model_dir(args.evaluate, cfg, validated)
        print(f"{args.evaluate}: validation loss {result['loss']:.4f} perplexity {result['ppl']:.2f} "
              f"({result['tokens']} tokens)")
        return 0
    from ..training.trainer import Trainer

    trainer = Trainer(cfg, validated)  # data paths, device and AMP mode are checked before any process group
    result = trainer.train(stop_after=args.stop_after_steps)
    if result.get("eval"):
        print(f"validation loss {result['eval']['loss']:.4f} perplexity {result['eval']['ppl']:.2f}")
    return 0


def _worker_argv() -> list[str]:
    """The user's own `pangu train` arguments (`cli.ARGV`) without the launching process's `--nproc N` /
    `--verbose`: what each launched worker runs, so a new train flag reaches the workers with no change here."""
    from paddle_pangu import cli
    from paddle_pangu.errors import UsageError

    from ..training.launch import strip_launch_flags

    argv = cli.ARGV[1:] if cli.ARGV[:1] == ["train"] else list(cli.ARGV)
    argv = [a for a in strip_launch_flags(argv, ("--nproc",)) if a != "--verbose"]
    again = cli.build_parser(only="train").parse_args(["train", *argv])
    if again.nproc is not None or again.verbose:  # an abbreviation (`--npro 2`) the strip above cannot see
        raise UsageError("write --nproc and --verbose in full: every other argument is passed to the workers")
    return argv


def _launch(args) -> int:
    """`--nproc N`: validate against N processes here, then run the job under paddle.distributed.launch."""
    import os

    from paddle_pangu.errors import UsageError

    from ..training.launch import run_launched

    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    cfg, layout = _load_config(args, args.nproc)
    cfg.validate(args.nproc)  # the one check in this process
    argv = _worker_argv()
    from ..io.outdir import LOCKED_ENV, lock_output_dir

    # the launcher holds the output_dir lock for its workers (before its logs go there)
    lock_output_dir(cfg.train.output_dir, f"pangu train --nproc {args.nproc}", "train.output_dir")
    os.environ[LOCKED_ENV] = os.path.realpath(cfg.train.output_dir)
    log_dir = os.path.join(cfg.train.output_dir, "launch_logs")
    env = {PLANNED_ENV: layout} if layout else {}  # --parallel auto: the workers apply this process's plan
    return run_launched(argv, args.nproc, log_dir, verbose=args.verbose, env=env)


def _check_launched(args, cfg, world: int) -> None:
    """A layout that needs N processes started as one process: say exactly which command runs it."""
    from paddle_pangu.errors import UsageError

    needed = cfg.parallel_config().world_size
    if world == 1 and needed > 1 and not args.evaluate and not args.check_only:
        import shlex

        argv = shlex.join(_worker_argv())  # the user's --set overrides and flags, kept
        raise UsageError(f"{args.config} needs {needed} processes (its parallel layout) but this is one process; run "
                         f"`pangu train {argv} --nproc {needed}` or `python -m "
                         f"paddle.distributed.launch --nproc_per_node {needed} tools/train.py {argv}`")
