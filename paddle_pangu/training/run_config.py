"""Run configuration: one YAML file -> typed dataclasses.

A run YAML names a model preset plus overrides, the data (prepared datasets
and mixture weights, or a synthetic source for tests), the optimizer and
schedule, the parallel layout (a typed `ParallelConfig`, built once by the
loader), AMP, checkpoints and logging. It is read by the one typed loader
(`config/loader.py`, also used by `prepare-data`); every error names the YAML
field and what was expected, so a bad file fails before any process group
exists.

One of each: the seed is `train.seed`, the sequence length `data.seq_len`
(default: the model's positions); `parallel:` may not repeat them.
`RunConfig.validate(world_size)` is the one check of the whole run and hands
on the validated (PanGuConfig, ParallelConfig) pair, the latter carrying that
seed and sequence length.

Example (see configs/pretrain/*.yaml)::

    model: {preset: mini, overrides: {hidden_dropout_prob: 0.0}}
    data: {paths: [data/peoples_daily], weights: [1.0], seq_len: 256}
    optim: {lr: 3.0e-4, min_lr: 3.0e-5, warmup_steps: 20}
    parallel: {mp_degree: 2, micro_batch_size: 4, accumulate_steps: 2}
    train: {max_steps: 200, seed: 1234}
"""
from __future__ import annotations

import math

import dataclasses
import os
from dataclasses import dataclass, field

from ..config import loader
from ..config.parallel_config import ParallelConfig, ParallelConfigError
from ..errors import ConfigError


class RunConfigError(ConfigError):
    """A run YAML is malformed; the message names the file and the field."""


@dataclass
class ModelSection:
    """Which network: a preset from `paddle_pangu.config.presets` plus field overrides."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)
    init_from: str | None = None  # a model directory or a .pdparams plain state dict to start from


@dataclass
class SyntheticData:
    """Deterministic random token samples (tests, benchmarks): no tokenizer, no files."""

    num_samples: int = 256
    vocab_size: int | None = None  # default: the model's vocab_size
    eod_every: int = 0  # put an end-of-document token every k tokens (0: never)


@dataclass
class DataSection:
    """Training data: prepared datasets (`pangu prepare-data` .bin/.idx dirs) mixed by weight."""

    paths: list = field(default_factory=list)
    weights: list | None = None
    seq_len: int | None = None  # the run's one sequence length; default: the model's max_position_embeddings
    splits: list | None = None  # train / valid / test document ratios; None = the dataset manifest's split
    synthetic: SyntheticData | None = None
    tokenizer: str | None = None  # a tokenizer dir; None = PanGuTokenizer.from_default()


@dataclass
class OptimSection:
    """AdamW and the warmup + cosine schedule (REF "Training recipe")."""

    lr: float = 1.0e-4
    min_lr: float = 1.0e-6
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 2000
    decay_steps: int | None = None  # default: train.max_steps
    decay_style: str = "cosine"  # cosine | linear | constant


@dataclass
class AmpSection:
    """Mixed precision: dtype float32 (off), bfloat16 or float16; level O1 or O2."""

    dtype: str = "float32"
    level: str = "O2"
    init_loss_scale: float = 32768.0
    custom_black_list: list = field(default_factory=lambda: ["layer_norm", "softmax", "softmax_with_cross_entropy"])


@dataclass
class TrainSection:
    """Loop length, seeds, evaluation cadence and device."""

    max_steps: int = 100
    seed: int = 1234  # the run's one seed (parameters, dropout streams, data order)
    device: str = "auto"  # auto | cpu | gpu | npu
    eval_interval: int = 0  # 0: only at the end
    eval_iters: int = 4
    output_dir: str = "runs/default"
    max_nonfinite_steps: int = 3  # consecutive non-finite steps skipped before the run stops (0: stop at the first)


@dataclass
class CheckpointSection:
    """Periodic per-rank checkpoints and the final consolidated model directory."""

    save_interval: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto (the newest checkpoint in output_dir that verifies) | none | a checkpoint dir
    force_resume: bool = False  # resume even if the run config differs in more than max_steps / logging / eval
    # resume a checkpoint written by another dp / mp / pp / sharding layout, converting it (training/checkpoint/reshard.py)
    reshard: bool = False
    save_final_model: bool = True
    # above this many parameters an mp/pp job writes final_model/ as per-rank files (PaddleNLP names,
    # merged later by `pangu reshard`) instead of gathering the whole model onto rank 0
    consolidate_max_params: int = 2_000_000_000


@dataclass
class LoggingSection:
    """Console line every `log_interval` steps, VisualDL scalars, tqdm bar."""

    log_interval: int = 10
    visualdl: bool = True
    progress_bar: bool = True


@dataclass
class RunConfig:
    """A whole pretraining run, as read from one YAML file."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    amp: AmpSection = field(default_factory=AmpSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    world_size: int | None = None  # the intended number of processes (checked by tests/test_configs.py)
    source: str = "<dict>"

    # ---- derived objects -------------------------------------------------
    def model_config(self):
        """The PanGuConfig: preset + overrides (errors name `model.*`)."""
        from paddle_pangu.config import get_preset

        try:
            return get_preset(self.model.preset, **self.model.overrides)
        except (KeyError, ValueError, TypeError) as exc:
            raise RunConfigError(f"{self.source}: model.preset/overrides: {exc}") from exc

    def parallel_config(self) -> ParallelConfig:
        """The layout of the `parallel:` section (typed when loaded; not yet checked against the model)."""
        return self.parallel

    @property
    def seq_len(self) -> int:
        """data.seq_len, else the model's max_position_embeddings."""
        return int(self.data.seq_len or self.model_config().max_position_embeddings)

    def validate(self, world_size: int | None = None):
        """The one check of the run: every section, then the layout against the model (and `world_size`,
        default the declared `world_size`), all before any collective.

        Returns (PanGuConfig, ParallelConfig); the ParallelConfig carries `train.seed` and the sequence length.
        """
        model_cfg = self.model_config()
        _check_sections(self, model_cfg)
        par = dataclasses.replace(self.parallel, seed=self.train.seed, seq_length=self.seq_len)
        world = world_size if world_size is not None else self.world_size
        try:
            par.validate(model_cfg, world)
        except ParallelConfigError as exc:
            raise RunConfigError(f"{self.source}: parallel: {exc}") from exc
        return model_cfg, par


def check_data_paths(cfg: RunConfig) -> None:
    """Every `data.paths` entry is a prepared dataset directory or a `.bin/.idx` prefix (checked at train time)."""
    if cfg.data.synthetic is not None:
        return
    for i, path in enumerate(cfg.data.paths):
        if not (os.path.isdir(path) or os.path.isfile(f"{path}.idx")):
            raise RunConfigError(f"{cfg.source}: data.paths[{i}]={path!r} does not exist (expected a directory made by "
                                 f"`pangu prepare-data --output {path}` or a .bin/.idx prefix)")


def _check_sections(cfg: RunConfig, model_cfg) -> None:
    src = cfg.source
    checks = [
        (cfg.optim.decay_style in ("cosine", "linear", "constant"), "optim.decay_style", "cosine | linear | constant"),
        (cfg.optim.lr > 0, "optim.lr", "a positive learning rate"),
        (0 <= cfg.optim.min_lr <= cfg.optim.lr, "optim.min_lr", "0 <= min_lr <= lr"),
        (0 < cfg.optim.beta1 < 1 and 0 < cfg.optim.beta2 < 1, "optim.beta1/beta2", "values in (0, 1)"),
        (cfg.optim.warmup_steps >= 0, "optim.warmup_steps", ">= 0"),
        (cfg.optim.grad_clip >= 0, "optim.grad_clip", ">= 0 (0 disables clipping)"),
        (cfg.amp.dtype in ("float32", "bfloat16", "float16"), "amp.dtype", "float32 | bfloat16 | float16"),
        (cfg.amp.level in ("O1", "O2"), "amp.level", "O1 | O2"),
        (cfg.train.max_steps > 0, "train.max_steps", "a positive step count"),
        (cfg.train.device in ("auto", "cpu", "gpu", "npu"), "train.device", "auto | cpu | gpu | npu"),
        (cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", ">= 1"),
        (cfg.train.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", ">= 0"),
        (cfg.data.seq_len is None or cfg.data.seq_len >= 1, "data.seq_len", "a positive sequence length"),
        (cfg.data.synthetic is None or cfg.data.synthetic.num_samples >= 1, "data.synthetic.num_samples",
         "a positive sample count"),
        (cfg.logging.log_interval >= 1, "logging.log_interval", ">= 1"),
        (cfg.seq_len <= model_cfg.max_position_embeddings, "data.seq_len",
         f"<= model max_position_embeddings ({model_cfg.max_position_embeddings})"),
        (cfg.data.splits is None or _three_ratios(cfg.data.splits),
         "data.splits", "three non-negative train/valid/test ratios"),
    ]
    for ok, name, expected in checks:
        if not ok:
            raise RunConfigError(f"{src}: {name}={_get(cfg, name)!r}: expected {expected}")
    data = cfg.data
    if data.synthetic is None and not data.paths:
        raise RunConfigError(f"{src}: data.paths is empty: list prepared dataset directories or set data.synthetic")
    if data.weights is not None and len(data.weights) != len(data.paths):
        raise RunConfigError(
            f"{src}: data.weights has {len(data.weights)} entries for {len(data.paths)} data.paths"
        )


def _three_ratios(value) -> bool:
    """data.splits: a list of three finite non-negative numbers (a None, a string or a bool inside is an
    error line, not a float() traceback)."""
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0
                    for s in value))


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("/")[0].split("."):
        obj = getattr(obj, part, None)
    return obj


# ---- YAML -> dataclasses ---------------------------------------------------
# fields of ParallelConfig a run YAML may not set: the run has one of each elsewhere
_NOT_IN_PARALLEL = {"seed": "train.seed", "seq_length": "data.seq_len"}


def run_config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Build a RunConfig from a parsed YAML mapping; errors start with `source`."""
    parallel = data.get("parallel") or {}
    for name, home in _NOT_IN_PARALLEL.items():
        if isinstance(parallel, dict) and name in parallel:
            raise RunConfigError(f"{source}: parallel.{name}={parallel[name]!r}: the run's one {name.replace('_', ' ')} "
                                 f"is {home}; set it there")
    try:
        cfg = loader.build(RunConfig, data, "", RunConfigError)
    except RunConfigError as exc:
        raise RunConfigError(f"{source}: {exc}") from exc
    cfg.source = source
    return cfg


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` command-line overrides (values parsed as YAML)."""
    return loader.apply_overrides(data, overrides, RunConfigError)


def read_run_mapping(path: str, overrides: list[str] | None = None) -> dict:
    """The mapping of a run YAML with `key=value` overrides applied (the file read once, not yet typed)."""
    return apply_overrides(loader.read_yaml(path, "run config file", RunConfigError), overrides or [])


def load_run_config(path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML (plus `key=value` overrides) into a RunConfig."""
    return run_config_from_dict(read_run_mapping(path, overrides), source=path)


def to_dict(cfg: RunConfig) -> dict:
    """Plain-dict form (saved next to checkpoints so a run records what it used)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    for name in _NOT_IN_PARALLEL:  # carried by train.seed / data.seq_len
        out["parallel"].pop(name, None)
    return out
