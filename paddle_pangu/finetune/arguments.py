"""`pangu finetune` arguments: our model / data dataclasses plus every PaddleNLP `TrainingArguments` field.

Style of PaddleNLP's `llm/run_finetune.py`: one JSON or YAML file holds the fields of all three
dataclasses flat (`model_name_or_path`, `train_file`, `learning_rate`, `tensor_parallel_degree`, ...);
command-line flags override the file (`--learning_rate 1e-4`, dashes also accepted: `--eval-steps`).
Parsing goes through PaddleNLP's own `PdArgumentParser`, so each option means what it means in
PaddleNLP and `pangu finetune --help` lists them all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError, UsageError
from ..utils.json_file import read_json
from ..utils.yaml_file import read_yaml

TRUNCATION_POLICIES = ("left", "drop")

# short spellings kept from the first `pangu finetune` (README, scripts)
ALIASES = {
    "model_name_or_path": ["--model"], "train_file": ["--train"], "eval_file": ["--eval"],
    "output_dir": ["--output"], "learning_rate": ["--lr"], "num_train_epochs": ["--epochs"],
    "per_device_train_batch_size": ["--batch-size"], "gradient_accumulation_steps": ["--grad-accum"],
}


@dataclass
class ModelArguments:
    """What to fine-tune and how (full or LoRA)."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "model directory or preset:NAME"})
    tokenizer_name_or_path: Optional[str] = field(default=None, metadata={"help": "default: the model's vocab.model"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (PaddleNLP PEFT) instead of all weights"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch"})
    lora_target_modules: str = field(
        default="q_proj,k_proj,v_proj,out_proj,fc_in,fc_out",
        metadata={"help": "comma-separated PanGu sublayer names that get adapters (attention Q/K/V/out, FFN in/out)"})
    lora_path: Optional[str] = field(default=None, metadata={"help": "resume from saved LoRA adapter weights"})


@dataclass
class DataArguments:
    """Fine-tuning data: files, template, length policy."""

    train_file: Optional[str] = field(default=None, metadata={
        "help": "JSONL (prompt/response, messages or text rows) or builtin:reviews|headlines|instructions"})
    eval_file: Optional[str] = field(default=None, metadata={"help": "JSONL for eval loss (else eval_ratio of train)"})
    eval_ratio: float = field(default=0.0, metadata={"help": "hold out this fraction of train for eval when no eval_file"})
    max_length: Optional[int] = field(default=None, metadata={"help": "tokens per example; default/limit: model positions"})
    truncation: str = field(default="left", metadata={
        "help": "left: shorten the prompt from the left, then the response from the right (its <eot> kept); "
                "drop: skip examples that do not fit", "choices": list(TRUNCATION_POLICIES)})
    packing: bool = field(default=False, metadata={
        "help": "pack several examples per sequence; attention stays inside each (document-reset mask)"})
    response_only_loss: bool = field(default=True, metadata={"help": "loss on response tokens only (else every token)"})
    prompt_field: str = field(default="prompt", metadata={"help": "JSONL field of the prompt"})
    response_field: str = field(default="response", metadata={"help": "JSONL field of the response"})
    messages_field: str = field(default="messages", metadata={"help": "JSONL field of chat messages (role/content)"})
    builtin_max_examples: int = field(default=2000, metadata={"help": "examples taken from a builtin: dataset"})


def _with_aliases(group):
    """A stand-in for an argparse group: adds the dash spelling and short aliases of each flag, and
    suppresses defaults, so the parsed namespace holds only what the user typed."""

    class Adder:
        def add_argument(self, name, **kwargs):
            names = [name]
            if "_" in name:
                names.append(name.replace("_", "-"))
            names += ALIASES.get(name[2:], [])
            kwargs.pop("required", None)
            kwargs["default"] = argparse.SUPPRESS
            return group.add_argument(*names, **kwargs)

    return Adder()


def dataclass_types():
    from paddlenlp.trainer import TrainingArguments

    return (ModelArguments, DataArguments, TrainingArguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `--config` and every field of the three dataclasses (for parsing and for --help)."""
    from typing import get_type_hints

    from paddlenlp.trainer import PdArgumentParser

    parser.add_argument("config", nargs="?", default=None, help="JSON or YAML file of the fields below")
    for dtype in dataclass_types():
        group = _with_aliases(parser.add_argument_group(dtype.__name__))
        hints = get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                f.type = hints[f.name]
                PdArgumentParser._parse_dataclass_field(group, f)


def read_config_file(path: str) -> dict:
    """A flat dict of fields from a .json / .yaml / .yml file (YAML through the one reader, utils/yaml_file.py)."""
    if path.endswith((".yaml", ".yml")):
        return read_yaml(path)
    return read_json(path, "a fine-tune config: a mapping of field: value", ConfigError)  # the one JSON reader


def _to_argv(values: dict) -> list[str]:
    """PdArgumentParser.read_json's flattening (lists as several values, dicts as JSON); None = unset."""
    import enum

    argv: list[str] = []
    for key, value in values.items():
        if isinstance(value, enum.Enum):
            value = value.value
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_finetune_args(config: str | None = None, overrides: dict | None = None):
    """(ModelArguments, DataArguments, TrainingArguments) from a config file plus overrides (which win).

    Raises ConfigError naming the file and the unknown field(s) or the bad value.
    """
    from paddlenlp.trainer import PdArgumentParser

    values = read_config_file(config) if config else {}
    values.update(overrides or {})
    check_world_size(values, config, overrides or {})
    if values.get("eval_steps") and "evaluation_strategy" not in values:
        values["evaluation_strategy"] = "steps"  # eval_steps alone means "evaluate every eval_steps"
    device = place_on_device(values)  # before TrainingArguments, whose __post_init__ runs fleet.init
    parser = PdArgumentParser(dataclass_types())
    known = {f.name for d in dataclass_types() for f in dataclasses.fields(d) if f.init}
    unknown = sorted(set(values) - known)
    where = config or "command line"
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; see `pangu finetune --help` for the fields")
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(
            args=_to_argv(values), look_for_args_file=False)
    except SystemExit as exc:  # argparse already printed which value was wrong
        raise ConfigError(f"{where}: a field has an invalid value (see the message above)") from exc
    training_args.device = device.type  # PaddleNLP's own npu branches (flatten_param_grads) read it
    training_args.placed_on = device.type  # (not a field) trainer.run_finetune checks the place against it
    validate(model_args, data_args, training_args, where)
    return model_args, data_args, training_args


PARALLEL_DEGREES = ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree")


def processes_needed(values: dict) -> int:
    """Processes the layout's degrees multiply to (PaddleNLP's data-parallel degree fills the rest)."""
    needed = 1
    for key in PARALLEL_DEGREES:
        needed *= max(int(values.get(key) or 1), 1)
    return needed


def command_line(config: str | None, overrides: dict, nproc: int | None = None) -> str:
    """The `pangu finetune` command that reruns these settings (the user's overrides kept)."""
    import shlex

    argv = ["pangu", "finetune", *([config] if config else []), *_to_argv(overrides)]
    return shlex.join(argv + (["--nproc", str(nproc)] if nproc else []))


def check_world_size(values: dict, config: str | None, overrides: dict, world: int | None = None) -> None:
    """A layout that does not fit the processes started is refused with the command that runs it.

    PaddleNLP would otherwise reset e.g. tensor_parallel_degree=2 on one process to -1 and train
    without tensor parallelism, saying nothing."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) if world is None else world
    needed = processes_needed(values)
    if world % needed == 0:
        return
    layout = ", ".join(f"{k}={values[k]}" for k in PARALLEL_DEGREES if int(values.get(k) or 1) > 1)
    where = config or "command line"
    raise UsageError(f"{where}: {layout} needs {needed} processes (or a multiple) but this run has {world}; run "
                     f"`{command_line(config, overrides, needed)}`")


def place_on_device(values: dict):
    """Put this process on the run's device before PaddleNLP's fleet.init; returns its DeviceInfo.

    PaddleNLP's `device` field (default "gpu") only names the device: nothing in the Trainer calls
    `paddle.set_device`, so a run went wherever Paddle's default place was. Here `device` (when the
    config or a flag gives it; else "auto": npu, then gpu, then cpu) is resolved by
    `parallel.device.select_device` (a missing device is a DeviceError, one line), the NPU recipe's
    environment is applied, and each launched rank gets its own device (PADDLE_LOCAL_RANK) and the
    process-group backend of that device (xccl on npu, the gloo adapter on cpu)."""
    from ..parallel.device import npu_env_defaults, select_device
    from ..parallel.topology import collective_env

    import paddle

    device = select_device(str(values.get("device") or "auto"))
    npu_env_defaults(device)
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("PADDLE_RANK_IN_NODE", "0")))
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        collective_env(device, local_rank)
        if device.type == "cpu":  # fleet's mp / pp / sharding paths need the gloo adapter before fleet.init
            from ..parallel import cpu_backend

            cpu_backend.install()
    paddle.set_device(device.paddle_device(local_rank))
    return device


def validate(model_args, data_args, training_args, where: str) -> None:
    """Reject at start what would otherwise fail in the middle of training."""
    if not model_args.model_name_or_path:
        raise ConfigError(f"{where}: model_name_or_path is required (a model directory or preset:NAME)")
    if not data_args.train_file and training_args.do_train is not False:
        raise ConfigError(f"{where}: train_file is required (JSONL or builtin:instructions)")
    if data_args.truncation not in TRUNCATION_POLICIES:
        raise ConfigError(f"{where}: truncation={data_args.truncation!r}: expected one of {TRUNCATION_POLICIES}")
    for name, instead in (("do_export", "run `pangu export --model OUTPUT_DIR --output DIR` on the fine-tuned model"),
                          ("do_predict", "run `pangu generate` or `pangu evaluate --model OUTPUT_DIR`"),
                          ("sequence_parallel", "PanGu has no sequence-parallel layers; use tensor_parallel_degree")):
        if getattr(training_args, name, False):
            raise ConfigError(f"{where}: {name}=True is not supported by pangu finetune (it would be ignored); {instead}")
    if not 0.0 <= data_args.eval_ratio < 1.0:
        raise ConfigError(f"{where}: eval_ratio={data_args.eval_ratio}: expected 0 <= eval_ratio < 1")
    if data_args.max_length is not None and data_args.max_length < 2:
        raise ConfigError(f"{where}: max_length={data_args.max_length}: need at least 2 tokens")
    evaluating = str(getattr(training_args.evaluation_strategy, "value", training_args.evaluation_strategy)) != "no"
    if evaluating and not (data_args.eval_file or data_args.eval_ratio > 0):
        raise ConfigError(
            f"{where}: evaluation_strategy={training_args.evaluation_strategy.value!r} / eval_steps="
            f"{training_args.eval_steps} but there is no eval data: set eval_file or eval_ratio > 0")
