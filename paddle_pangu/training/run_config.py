"""Run configuration: one YAML file -> typed dataclasses.

A run YAML names a model preset plus overrides, the data (prepared datasets
and mixture weights, or a synthetic source for tests), the optimizer and
schedule, the parallel layout (handed to `ParallelConfig`), AMP, checkpoints
and logging. Every error names the YAML field and what was expected, so a
bad file fails before any process group exists.

Example (see configs/pretrain/*.yaml)::

    model: {preset: mini, overrides: {hidden_dropout_prob: 0.0}}
    data: {paths: [data/peoples_daily], weights: [1.0], seq_len: 256}
    optim: {lr: 3.0e-4, min_lr: 3.0e-5, warmup_steps: 20}
    parallel: {mp_degree: 2, micro_batch_size: 4, accumulate_steps: 2}
    train: {max_steps: 200, seed: 1234}
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from paddle_pangu.errors import ConfigError


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
    """Training data: prepared datasets (helper C's .bin/.idx dirs) mixed by weight."""

    paths: list = field(default_factory=list)
    weights: list | None = None
    seq_len: int | None = None  # default: the model's max_position_embeddings
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
    seed: int = 1234
    device: str = "auto"  # auto | cpu | gpu | npu
    eval_interval: int = 0  # 0: only at the end
    eval_iters: int = 4
    output_dir: str = "runs/default"


@dataclass
class CheckpointSection:
    """Periodic per-rank checkpoints and the final consolidated model directory."""

    save_interval: int = 0  # 0: only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in output_dir) | none | a checkpoint dir
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
    parallel: dict = field(default_factory=dict)
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

    def parallel_config(self):
        """B2's ParallelConfig built from the `parallel:` section."""
        from paddle_pangu.config.parallel_config import ParallelConfig, ParallelConfigError

        try:
            return ParallelConfig.from_dict(dict(self.parallel), source="parallel")
        except (ParallelConfigError, TypeError) as exc:
            raise RunConfigError(f"{self.source}: {exc}") from exc

    @property
    def seq_len(self) -> int:
        """data.seq_len, else parallel.seq_length, else the model's max_position_embeddings."""
        seq = self.data.seq_len or self.parallel.get("seq_length")
        return int(seq or self.model_config().max_position_embeddings)

    def validate(self, world_size: int | None = None):
        """Check every section; with `world_size`, also the parallel layout (before any collective).

        Returns (PanGuConfig, ParallelConfig).
        """
        from paddle_pangu.config.parallel_config import ParallelConfigError

        model_cfg = self.model_config()
        par = self.parallel_config()
        _check_sections(self, model_cfg)
        world = world_size if world_size is not None else self.world_size
        if world is not None:
            try:
                par.validate(model_cfg, world)
            except ParallelConfigError as exc:
                raise RunConfigError(f"{self.source}: parallel: {exc}") from exc
        seq = self.parallel.get("seq_length")
        if self.data.seq_len and seq and int(seq) != int(self.data.seq_len):
            raise RunConfigError(f"{self.source}: data.seq_len={self.data.seq_len} contradicts parallel.seq_length={seq}")
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
        (cfg.logging.log_interval >= 1, "logging.log_interval", ">= 1"),
        (cfg.seq_len <= model_cfg.max_position_embeddings, "data.seq_len",
         f"<= model max_position_embeddings ({model_cfg.max_position_embeddings})"),
        (cfg.data.splits is None or (len(cfg.data.splits) == 3 and all(float(s) >= 0 for s in cfg.data.splits)),
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


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("/")[0].split("."):
        obj = getattr(obj, part, None)
    return obj


# ---- YAML -> dataclasses ---------------------------------------------------
def _coerce(value: Any, hint, where: str):
    """Convert one YAML value to the annotated type, or raise naming the field."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise RunConfigError(f"{where}={value!r}: expected true or false")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise RunConfigError(f"{where}={value!r}: expected a number")
        try:
            number = float(value)
        except ValueError as exc:
            raise RunConfigError(f"{where}={value!r}: expected a number") from exc
        if hint is int and number != int(number):
            raise RunConfigError(f"{where}={value!r}: expected an integer")
        return hint(number) if hint is float else int(number)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise RunConfigError(f"{where}={value!r}: expected a string")
        return str(value)
    if hint in (list, dict) or origin in (list, dict):
        base = origin or hint
        if not isinstance(value, base):
            raise RunConfigError(f"{where}={value!r}: expected a {'list' if base is list else 'mapping'}")
        return value
    return value


def _build(cls, data, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise RunConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RunConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def run_config_from_dict(data: dict, source: str = "<dict>") -> RunConfig:
    """Build a RunConfig from a parsed YAML mapping; errors start with `source`."""
    try:
        cfg = _build(RunConfig, data, "")
    except RunConfigError as exc:
        raise RunConfigError(f"{source}: {str(exc).lstrip('.')}") from exc
    cfg.source = source
    return cfg


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` command-line overrides (values parsed as YAML)."""
    for item in overrides or []:
        if "=" not in item:
            raise RunConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RunConfigError(f"override {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_run_config(path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML (plus `key=value` overrides) into a RunConfig."""
    if not os.path.isfile(path):
        raise RunConfigError(f"{path}: run config file not found")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise RunConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RunConfigError(f"{path}: top level must be a mapping of sections")
    return run_config_from_dict(apply_overrides(data, overrides or []), source=path)


def to_dict(cfg: RunConfig) -> dict:
    """Plain-dict form (saved next to checkpoints so a run records what it used)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out
