"""ParallelConfig: how a PanGu-alpha model is laid out over devices.

The model shape lives in `PanGuConfig`; this dataclass only describes the
hybrid-parallel layout (data / tensor / pipeline / sharding degrees, batch
split, recompute). `validate()` is pure Python: it runs before any process
group exists, so a bad layout fails with one clear message instead of a hang
inside fleet. Degrees are never written back into the model config.

Pipeline split (decided here, used by `model/modeling_pp.py`): the
`num_layers` transformer layers *including* the query layer (REF "layer
count") are divided evenly over the `pp_degree` stages. Stage 0 additionally
holds the word and position embeddings; the last stage holds the final
layernorm, the query layer (with its top-query table) and the tied LM head.
REF "Parallelism used": 200B = 16 stages x 4 layers (64 layers incl. query).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from paddle_pangu.errors import ConfigError

__all__ = ["ParallelConfig", "ParallelConfigError", "padded_vocab_size", "pad_vocab_for_mp", "pipeline_layer_counts"]


class ParallelConfigError(ConfigError):
    """A parallel layout that cannot run; the message names the field and the fix."""


def padded_vocab_size(vocab_size: int, mp_degree: int) -> int:
    """Smallest multiple of `mp_degree` >= `vocab_size`.

    REF "Model sizes": vocabulary 40000 needs no padding for mp <= 8; pad to
    a multiple of mp otherwise (each vocab-parallel shard must be equal).
    """
    if vocab_size <= 0 or mp_degree <= 0:
        raise ParallelConfigError(f"padded_vocab_size({vocab_size}, {mp_degree}): both must be positive")
    return int(math.ceil(vocab_size / mp_degree) * mp_degree)


def pad_vocab_for_mp(model_config, mp_degree: int):
    """Return a copy of `model_config` whose vocab_size divides by `mp_degree`.

    The original config is not modified. Padded rows are never produced by
    the tokenizer; their logits only enter the softmax normaliser.
    """
    new_vocab = padded_vocab_size(model_config.vocab_size, mp_degree)
    if new_vocab == model_config.vocab_size:
        return model_config
    padded = copy.deepcopy(model_config)
    padded.vocab_size = new_vocab
    return padded


def pipeline_layer_counts(num_layers: int, pp_degree: int) -> list[int]:
    """Transformer layers (blocks + query layer) per pipeline stage.

    Raises ParallelConfigError unless the split is even (see module doc).
    """
    if pp_degree < 1:
        raise ParallelConfigError(f"ParallelConfig.pp_degree={pp_degree}: must be >= 1")
    if num_layers < pp_degree or num_layers % pp_degree:
        raise ParallelConfigError(
            f"PanGuConfig.num_layers={num_layers} (blocks + query layer) cannot be split evenly over "
            f"ParallelConfig.pp_degree={pp_degree} pipeline stages; choose pp_degree dividing {num_layers}"
        )
    return [num_layers // pp_degree] * pp_degree


@dataclasses.dataclass
class ParallelConfig:
    """Hybrid-parallel layout of one training / inference run.

    Attributes:
        dp_degree: data-parallel replicas (full optimizer state each).
        mp_degree: tensor (model) parallel degree: attention heads, FFN width
            and the vocabulary are split this many ways (REF: 2.6B/13B used 8).
        pp_degree: pipeline stages (REF: 200B used 16).
        sharding_degree: data-parallel replicas whose optimizer state is
            sharded (ZeRO); counts as data parallelism for the batch split.
        sharding_stage: 1 = shard optimizer state, 2 = also gradients.
        micro_batch_size: samples per forward pass on one data-parallel rank.
        global_batch_size: samples per optimizer step over all data-parallel
            ranks. Give it or `accumulate_steps` (the other is derived); when
            both are None, accumulate_steps = 1.
        accumulate_steps: micro-batches per optimizer step on one rank; with
            pp > 1 these are the pipeline micro-batches.
        recompute_interval: activation recompute; 0 off, 1 every block, k
            every k-th block (REF: recompute on every block).
        seq_length: training sequence length; None = model's
            max_position_embeddings.
        seed: global seed; tensor-parallel ranks get seed + mp_rank for their
            local dropout stream.
    """

    dp_degree: int = 1
    mp_degree: int = 1
    pp_degree: int = 1
    sharding_degree: int = 1
    sharding_stage: int = 1
    micro_batch_size: int = 1
    global_batch_size: int | None = None
    accumulate_steps: int | None = None
    recompute_interval: int = 0
    seq_length: int | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("dp_degree", "mp_degree", "pp_degree", "sharding_degree", "micro_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParallelConfigError(f"ParallelConfig.{name}={value!r}: expected an integer >= 1")
        if self.sharding_stage not in (1, 2):
            raise ParallelConfigError(f"ParallelConfig.sharding_stage={self.sharding_stage!r}: expected 1 or 2")
        if not isinstance(self.recompute_interval, int) or self.recompute_interval < 0:
            raise ParallelConfigError(
                f"ParallelConfig.recompute_interval={self.recompute_interval!r}: expected 0 (off), 1 (every block) or k > 1"
            )
        self._derive_batch()

    # ---- derived ---------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Processes the layout needs: dp * mp * pp * sharding."""
        return self.dp_degree * self.mp_degree * self.pp_degree * self.sharding_degree

    @property
    def data_parallel_size(self) -> int:
        """Ranks that see different samples (dp * sharding)."""
        return self.dp_degree * self.sharding_degree

    def _derive_batch(self) -> None:
        per_step = self.micro_batch_size * self.data_parallel_size
        if self.accumulate_steps is not None and (not isinstance(self.accumulate_steps, int) or self.accumulate_steps < 1):
            raise ParallelConfigError(f"ParallelConfig.accumulate_steps={self.accumulate_steps!r}: expected an integer >= 1")
        if self.global_batch_size is None:
            self.accumulate_steps = self.accumulate_steps or 1
            self.global_batch_size = per_step * self.accumulate_steps
            return
        if self.global_batch_size % per_step:
            raise ParallelConfigError(
                f"ParallelConfig.global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size * dp_degree * sharding_degree = {self.micro_batch_size} * "
                f"{self.dp_degree} * {self.sharding_degree} = {per_step}"
            )
        derived = self.global_batch_size // per_step
        if self.accumulate_steps is not None and self.accumulate_steps != derived:
            raise ParallelConfigError(
                f"ParallelConfig.accumulate_steps={self.accumulate_steps} contradicts global_batch_size="
                f"{self.global_batch_size} / (micro_batch_size * dp * sharding = {per_step}) = {derived}"
            )
        self.accumulate_steps = derived

    # ---- checks ----------------------------------------------------------
    def validate(self, model_config, world_size: int | None = None) -> "ParallelConfig":
        """Check this layout against a model shape and the launched world size.

        Pure Python (no process group needed). Raises ParallelConfigError with
        the offending field; warns when pp has fewer micro-batches than stages.
        Returns self so calls can be chained.
        """
        if world_size is not None and world_size != self.world_size:
            raise ParallelConfigError(
                f"dp_degree*mp_degree*pp_degree*sharding_degree = {self.dp_degree}*{self.mp_degree}*"
                f"{self.pp_degree}*{self.sharding_degree} = {self.world_size} but the job has world_size={world_size}"
            )
        self._check_tensor_parallel(model_config)
        pipeline_layer_counts(model_config.num_layers, self.pp_degree)
        self._check_sequence(model_config)
        if self.pp_degree > 1 and self.accumulate_steps < self.pp_degree:
            warnings.warn(
                f"ParallelConfig.accumulate_steps={self.accumulate_steps} < pp_degree={self.pp_degree}: "
                "the pipeline never fills; use at least pp_degree micro-batches per step",
                stacklevel=2,
            )
        if self.recompute_interval > max(model_config.num_layers // self.pp_degree, 1):
            raise ParallelConfigError(
                f"ParallelConfig.recompute_interval={self.recompute_interval} exceeds the "
                f"{model_config.num_layers // self.pp_degree} layers per pipeline stage"
            )
        return self

    def _check_tensor_parallel(self, model_config) -> None:
        mp = self.mp_degree
        for field in ("num_attention_heads", "hidden_size", "ffn_hidden_size"):
            value = getattr(model_config, field)
            if value % mp:
                raise ParallelConfigError(
                    f"PanGuConfig.{field}={value} is not divisible by ParallelConfig.mp_degree={mp}"
                )
        if model_config.vocab_size % mp:
            raise ParallelConfigError(
                f"PanGuConfig.vocab_size={model_config.vocab_size} is not divisible by ParallelConfig.mp_degree={mp}; "
                f"pad it with pad_vocab_for_mp(config, {mp}) (-> {padded_vocab_size(model_config.vocab_size, mp)})"
            )

    def _check_sequence(self, model_config) -> None:
        if self.seq_length is None:
            return
        if not 1 <= self.seq_length <= model_config.max_position_embeddings:
            raise ParallelConfigError(
                f"ParallelConfig.seq_length={self.seq_length}: must be in [1, PanGuConfig.max_position_embeddings="
                f"{model_config.max_position_embeddings}]"
            )

    # ---- fleet -----------------------------------------------------------
    def hybrid_configs(self) -> dict:
        """The `DistributedStrategy.hybrid_configs` dict for fleet.init."""
        return {
            "dp_degree": self.dp_degree,
            "mp_degree": self.mp_degree,
            "pp_degree": self.pp_degree,
            "sharding_degree": self.sharding_degree,
            "pp_configs": {"micro_batch_size": self.micro_batch_size, "accumulate_steps": self.accumulate_steps},
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "parallel config") -> "ParallelConfig":
        """Build from a mapping (e.g. a YAML `parallel:` section); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParallelConfigError(f"{source}: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
