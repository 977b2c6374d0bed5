"""Memory and time estimates for one PanGu-alpha layout, term by term (formulas: docs/PLANNER.md).

Memory per process (bytes), for one pipeline stage:

- weights: parameters held by this process (tensor-split, on its pipeline stage) x 2 B (fp16/bf16
  O2) or 4 B (fp32).
- gradients: 4 B per parameter (fp32 main grads in mixed precision, as Megatron; fp32 grads in
  fp32). Not divided at stage 2: fleet's DygraphShardingOptimizerV2 keeps the full fused gradient
  buffer on every rank (measured); ZeRO-2 proper (Rajbhandari et al. 2020) would divide them.
- optimizer states: AdamW m and v (8 B) plus the fp32 master copy in mixed precision (4 B),
  sharded from stage 1 (ZeRO-1): whole tensors, largest first, at stage 1; elements at stage 2.
  REF "Training recipe".
- activations: per layer and micro-batch the count of Korthikanti et al. 2022 (arXiv 2205.05198,
  no sequence parallelism), generalised to element size e (2 fp16, 4 fp32), FFN width F and
  dropout masks of 1 B (none when the dropout probability is 0):
  s*b*h*(4e + 2m + (4e + 2eF/h)/t) + a*s^2*b*(e + m_a(e + 1))/t.
  A recomputed block keeps only its input (e*s*b*h) plus, during backward, one block in full
  (fleet recompute); the query layer is never recomputed. A 1F1B pipeline keeps min(pp - stage,
  micro-batches) micro-batches in flight on a stage. The last stage adds k fp32 copies of the
  logits, k x 4 x b*s*V/t: k = 2 (logits and softmax / gradient) for the fused softmax cross
  entropy kernels, k = 5 for the project's CPU vocab-parallel cross entropy
  (`parallel/cpu_backend/mp_ops.VocabParallelCrossEntropy`: logits, its fp32 copy, shifted, exp
  and softmax are alive together at the end of its forward; measured, docs/PLANNER.md).
- buffers: data parallelism keeps fused gradient buffers (paddle's DataParallel reducer: one more
  gradient copy); `reserve_gb` of the device preset adds workspace / fragmentation.
- peak: the largest of the activation moments listed in `activation_bytes`.

Time: 6 * params FLOPs per token for forward + backward plus attention's 12 * L * h * s
(Narayanan et al. 2021, arXiv 2104.04473), x (1 + 1/3) for recomputed blocks, over devices x peak x
utilisation, stretched by the 1F1B bubble (pp - 1) / (m + pp - 1); unoverlapped communication is
added: tensor-parallel all-reduces (4 per block and micro-batch, 6 with recompute), the gradient
all-reduce over the data-parallel ranks and pipeline p2p.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import PanGuConfig
from ..config.parallel_config import ParallelConfig

GIB = 1024**3
TERMS = ("weights", "gradients", "optimizer", "activations", "buffers")


@dataclass
class Hardware:
    """The cluster to plan for. Defaults: Ascend 910 as in the paper (see hardware.PRESETS)."""

    devices: int
    memory_gb: float = 32.0
    peak_tflops: float = 256.0  # at the training dtype
    devices_per_node: int = 8
    utilization: float = 0.35
    reserve_gb: float = 2.0
    intra_node_gbs: float = 30.0
    inter_node_gbs: float = 12.5
    dtype: str = "float16"  # float16 | bfloat16 (mixed precision O2) | float32
    name: str = "custom"

    @classmethod
    def from_preset(cls, preset, devices: int, dtype: str | None = None) -> "Hardware":
        """A Hardware from a `hardware.DevicePreset`; dtype defaults to the fastest the device has."""
        if dtype is None:
            dtype = "float16" if preset.peak_tflops_fp16 else ("bfloat16" if preset.peak_tflops_bf16 else "float32")
        peak = {"float16": preset.peak_tflops_fp16, "bfloat16": preset.peak_tflops_bf16,
                "float32": preset.peak_tflops_fp32}[dtype]
        if not peak:
            from ..errors import UsageError

            raise UsageError(f"device preset {preset.name} has no {dtype} matmul peak; choose another --dtype")
        return cls(devices, preset.memory_gb, peak, preset.devices_per_node, preset.utilization, preset.reserve_gb,
                   preset.intra_node_gbs, preset.inter_node_gbs, dtype, preset.name)

    @property
    def mixed(self) -> bool:
        return self.dtype != "float32"


def _seq(config: PanGuConfig, par: ParallelConfig) -> int:
    return par.seq_length or config.max_position_embeddings


def stage_parameters(config: PanGuConfig, par: ParallelConfig, stage: int | None = None) -> int:
    """Parameters held by one device of pipeline `stage` (None: the most loaded stage)."""
    h, f, v, s, t = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.max_position_embeddings, par.mp_degree
    block = 4 * h + (4 * h * h + 3 * h) // t + h + (2 * h * f + f) // t + h  # LNs and out biases replicated
    per_stage = config.num_layers // par.pp_degree
    word = v * h // t
    if par.pp_degree == 1:  # one device column holds everything once
        return per_stage * block + word + 2 * s * h + 2 * h  # + position and top-query tables, final LN
    first = per_stage * block + word + s * h  # word + position embedding
    last = per_stage * block + word + s * h + 2 * h  # tied head copy, top-query table, final LN
    middle = per_stage * block
    if stage is None:
        return max(first, last)
    return first if stage == 0 else last if stage == par.pp_degree - 1 else middle


def layer_activation_bytes(config: PanGuConfig, par: ParallelConfig, elem: int) -> float:
    """Bytes one full layer keeps for backward per micro-batch (Korthikanti et al. 2022, eq. 2 generalised)."""
    s, b, h, a, t = _seq(config, par), par.micro_batch_size, config.hidden_size, config.num_attention_heads, par.mp_degree
    m = 1 if config.hidden_dropout_prob > 0 else 0
    m_a = 1 if config.attention_probs_dropout_prob > 0 else 0
    f = config.ffn_hidden_size
    per_token = 4 * elem + 2 * m + (4 * elem + 2 * elem * f / h) / t
    return s * b * h * per_token + a * s * s * b * (elem + m_a * (elem + 1)) / t


def logit_copies(par: ParallelConfig, on_cpu: bool) -> int:
    """fp32 [b, s, V/t] tensors alive at the loss's peak (see module docstring)."""
    return 5 if on_cpu and par.mp_degree > 1 else 2


def activation_bytes(config: PanGuConfig, par: ParallelConfig, stage: int | None = None, elem: int = 2,
                     on_cpu: bool = False) -> int:
    """Peak activation and transient bytes of pipeline `stage` (None: the most loaded one).

    The peak is the largest of: the loss (every kept activation + k logits copies, last stage);
    the tied head's weight-gradient temporary [V/t, h] beside one logits gradient (last stage); the
    word embedding's weight-gradient temporary after all but one in-flight micro-batch are freed
    (first stage); one recomputed block in full beside the kept activations (recompute on).
    """
    if stage is None:
        stages = range(par.pp_degree) if par.pp_degree <= 2 else (0, 1, par.pp_degree - 1)
        return max(activation_bytes(config, par, st, elem, on_cpu) for st in stages)
    s, b, h = _seq(config, par), par.micro_batch_size, config.hidden_size
    layers = config.num_layers // par.pp_degree
    first, last = stage == 0, stage == par.pp_degree - 1
    full = layer_activation_bytes(config, par, elem)
    blocks = layers - 1 if last else layers  # the query layer sits on the last stage, never recomputed
    if par.recompute_interval:
        recomputed = -(-blocks // par.recompute_interval)  # blocks i with i % interval == 0
        per_micro = recomputed * elem * s * b * h + (layers - recomputed) * full
    else:
        per_micro = layers * full
    in_flight = min(par.pp_degree - stage, par.accumulate_steps) if par.pp_degree > 1 else 1
    kept = per_micro * in_flight
    logits = 4 * s * b * config.vocab_size / par.mp_degree  # one fp32 [b, s, V/t]
    weight_grad = elem * config.vocab_size * h / par.mp_degree  # dW of the word embedding / tied head
    peaks = [kept, kept + full if par.recompute_interval else 0.0]
    if last:
        peaks += [kept + logit_copies(par, on_cpu) * logits, kept + logits + weight_grad]
    if first:
        peaks.append(per_micro * (in_flight - 1) + weight_grad)
    return int(max(peaks))


def parameter_sizes(config: PanGuConfig, par: ParallelConfig, stage: int = 0) -> list[int]:
    """Element count of every parameter tensor one process of pipeline `stage` holds."""
    h, f, v, s, t = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.max_position_embeddings, par.mp_degree
    block = [h] * 4 + [h * h // t, h // t] * 3 + [h * h // t, h, h * f // t, f // t, f * h // t, h]
    sizes = block * (config.num_layers // par.pp_degree)
    first, last = stage == 0, stage == par.pp_degree - 1
    if first or last:
        sizes += [v * h // t, s * h]  # word + position embedding (the last stage: tied head copy + top-query table)
    if last:
        sizes += [h, h]  # final layernorm
    if first and last:
        sizes.append(s * h)  # top-query table beside the position table
    return sizes


def sharded_parameters(config: PanGuConfig, par: ParallelConfig, stage: int = 0, rank: int | None = None) -> float:
    """Parameters whose optimizer state sharding `rank` keeps (None: the most loaded rank).

    Stage 1 (fleet's DygraphShardingOptimizer) hands out whole tensors, largest first, each to the
    least loaded rank; stage 2 (DygraphShardingOptimizerV2, `split_param`) splits elements evenly.
    """
    sizes, sd = parameter_sizes(config, par, stage), par.sharding_degree
    if sd == 1 or par.sharding_stage == 2:
        return sum(sizes) / sd
    load = [0] * sd
    for n in sorted(sizes, reverse=True):
        load[load.index(min(load))] += n
    return max(load) if rank is None else load[rank]


def memory_terms(config: PanGuConfig, par: ParallelConfig, hw: Hardware, stage: int | None = None,
                 shard_rank: int | None = None) -> dict:
    """Bytes per process by term (module docstring); `stage` / `shard_rank` None = the most loaded one.

    Gradients are not divided at sharding stage 2: fleet's V2 optimizer keeps the full fused gradient
    buffer on every rank (measured, docs/PLANNER.md); ZeRO-2 proper would divide them.
    """
    if stage is None:
        stages = {0, par.pp_degree - 1} | ({1} if par.pp_degree > 2 else set())
        return max((memory_terms(config, par, hw, st, shard_rank) for st in sorted(stages)), key=lambda t: sum(t.values()))
    params = stage_parameters(config, par, stage)
    weight_b = 2 if hw.mixed else 4
    opt_b = (4 + 8) if hw.mixed else 8  # fp32 master + Adam m, v / Adam m, v
    dp_buffers = params * 4 if par.dp_degree > 1 else 0.0  # DataParallel's fused gradient groups
    return {
        "weights": float(params * weight_b),
        "gradients": float(params * 4),
        "optimizer": float(sharded_parameters(config, par, stage, shard_rank) * opt_b),
        "activations": float(activation_bytes(config, par, stage, 2 if hw.mixed else 4, hw.name == "cpu")),
        "buffers": float(dp_buffers + hw.reserve_gb * GIB),
    }


def step_seconds(config: PanGuConfig, par: ParallelConfig, hw: Hardware) -> float:
    s = _seq(config, par)
    tokens = par.global_batch_size * s
    flops = tokens * (6 * config.num_parameters() + 12 * config.num_layers * config.hidden_size * s)
    if par.recompute_interval:
        flops *= 1 + (1 / 3) / par.recompute_interval
    ideal = flops / (par.world_size * hw.peak_tflops * 1e12 * hw.utilization)
    bubble = (par.pp_degree - 1) / (par.accumulate_steps + par.pp_degree - 1) if par.pp_degree > 1 else 0.0
    return ideal / (1 - bubble) + comm_seconds(config, par, hw)


def _ring(bytes_: float, ranks: int, gbs: float) -> float:
    return 0.0 if ranks <= 1 else 2 * (ranks - 1) / ranks * bytes_ / (gbs * 1e9)


def comm_seconds(config: PanGuConfig, par: ParallelConfig, hw: Hardware) -> float:
    """Unoverlapped communication per optimizer step (see module docstring)."""
    s = _seq(config, par)
    elem = 2 if hw.mixed else 4
    act = elem * s * par.micro_batch_size * config.hidden_size  # one micro-batch's hidden state
    blocks = config.num_layers // par.pp_degree
    per_block = 6 if par.recompute_interval else 4
    mp = par.accumulate_steps * blocks * per_block * _ring(act, par.mp_degree, hw.intra_node_gbs)
    dp_ranks = par.dp_degree * par.sharding_degree
    dp_bw = hw.inter_node_gbs if par.world_size > hw.devices_per_node else hw.intra_node_gbs
    dp = _ring(elem * stage_parameters(config, par), dp_ranks, dp_bw)
    pp = 2 * par.accumulate_steps * act / (hw.inter_node_gbs * 1e9) if par.pp_degree > 1 else 0.0
    return mp + dp + pp


@dataclass
class Estimate:
    """One layout's numbers; `fits` when memory_gb <= hardware memory. Terms in GiB."""

    layout: dict
    params_per_device: int
    terms_gb: dict
    memory_gb: float
    fits: bool
    step_seconds: float
    tokens_per_second: float
    state_gb: float = 0.0
    activation_gb: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(config: PanGuConfig, par: ParallelConfig, hw: Hardware) -> Estimate:
    terms = {k: v / GIB for k, v in memory_terms(config, par, hw).items()}
    total = sum(terms.values())
    secs = step_seconds(config, par, hw)
    return Estimate(
        layout=par.to_dict(), params_per_device=stage_parameters(config, par),
        terms_gb={k: round(v, 3) for k, v in terms.items()}, memory_gb=round(total, 2), fits=total <= hw.memory_gb,
        step_seconds=round(secs, 4), tokens_per_second=round(par.global_batch_size * _seq(config, par) / secs, 1),
        state_gb=round(terms["weights"] + terms["gradients"] + terms["optimizer"], 2),
        activation_gb=round(terms["activations"], 2),
    )
