"""Memory and time estimates for one PanGu-alpha layout on hardware we don't have.

Memory per device (bytes) on the most loaded pipeline stage:
- weights / grads / optimizer: mixed precision keeps fp16 weights (2 B), an
  fp32 master copy (4 B), fp32 main grads (4 B) and Adam m, v (8 B); REF
  "Training recipe" (fp32 master weights, fp16 matmuls). Sharding stage 1
  divides master + Adam by the sharding degree, stage 2 also the grads.
- activations: per block and micro-batch, the fp16 count of Korthikanti et
  al. 2022 (arXiv 2205.05198) without sequence parallelism,
  s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes; with recompute only each
  checkpointed block input (2*s*b*h) is kept plus one block being recomputed.
  A 1F1B pipeline keeps up to pp micro-batches in flight on stage 0.
- logits: fp32 [b, s, V/t] plus its gradient.

Time: 6 * params FLOPs per token for forward + backward plus attention's
12 * L * h * s, times 4/3 when every block is recomputed; divided by devices x
peak x an assumed utilisation, and stretched by the 1F1B bubble
(pp - 1) / (m + pp - 1). Communication is added without overlap (a
conservative bound): ring all-reduces of the tensor-parallel activations
(4 per block and micro-batch, 6 with recompute) inside a node, the fp16
gradient all-reduce over the data-parallel ranks, and pipeline p2p between
nodes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import PanGuConfig
from ..config.parallel_config import ParallelConfig

GIB = 1024**3


@dataclass
class Hardware:
    """The cluster to plan for. Defaults: Ascend 910 as in the paper (32 GB HBM, ~256 TFLOPS fp16)."""

    devices: int
    memory_gb: float = 32.0
    peak_tflops: float = 256.0
    devices_per_node: int = 8
    utilization: float = 0.35  # assumed model-FLOPs utilisation (no throughput figure in the paper)
    reserve_gb: float = 2.0  # framework workspace, fragmentation, communication buffers
    intra_node_gbs: float = 56.0  # GB/s between devices of a node (HCCS / NVLink class)
    inter_node_gbs: float = 12.5  # GB/s between nodes (100 Gb/s RoCE / IB)


def stage_parameters(config: PanGuConfig, par: ParallelConfig) -> int:
    """Parameters held by the most loaded device (tensor-split, on the heaviest pipeline stage)."""
    h, f, v, s, t = config.hidden_size, config.ffn_hidden_size, config.vocab_size, config.max_position_embeddings, par.mp_degree
    block = 4 * h + (4 * h * h + 3 * h) // t + h + (2 * h * f + f) // t + h  # LNs and out biases replicated
    per_stage = config.num_layers // par.pp_degree
    word = v * h // t
    if par.pp_degree == 1:  # one device column holds everything once
        return per_stage * block + word + 2 * s * h + 2 * h  # + position and top-query tables, final LN
    first = per_stage * block + word + s * h  # word + position embedding
    last = per_stage * block + word + s * h + 2 * h  # tied head copy, top-query table, final LN
    return max(first, last)


def activation_bytes(config: PanGuConfig, par: ParallelConfig) -> int:
    """Activation memory of the most loaded stage (stage 0 of a 1F1B pipeline)."""
    s, b, h, a, t = par.seq_length or config.max_position_embeddings, par.micro_batch_size, config.hidden_size, \
        config.num_attention_heads, par.mp_degree
    full_block = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    blocks = config.num_layers // par.pp_degree
    if par.recompute_interval:
        kept = -(-blocks // par.recompute_interval)
        per_micro = kept * 2 * s * b * h + par.recompute_interval * full_block
    else:
        per_micro = blocks * full_block
    in_flight = min(par.pp_degree, par.accumulate_steps) if par.pp_degree > 1 else 1
    logits = 2 * 4 * s * b * config.vocab_size / t
    return int(per_micro * in_flight + logits)


def state_bytes(params: int, par: ParallelConfig, mixed: bool = True) -> int:
    """Weights + grads + optimizer state for `params` parameters on one device."""
    sd = par.sharding_degree
    if mixed:
        weights, opt = 2, (4 + 8) / sd  # fp16 copy; fp32 master + Adam m, v sharded from stage 1
    else:
        weights, opt = 4, 8 / sd  # fp32 weights; Adam m, v sharded
    grads = 4 / sd if par.sharding_stage == 2 else 4  # fp32 main grads, sharded at stage 2
    return int(params * (weights + grads + opt))


def step_seconds(config: PanGuConfig, par: ParallelConfig, hw: Hardware) -> float:
    s = par.seq_length or config.max_position_embeddings
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
    s = par.seq_length or config.max_position_embeddings
    act = 2 * s * par.micro_batch_size * config.hidden_size  # fp16 activation of one micro-batch
    blocks = config.num_layers // par.pp_degree
    per_block = 6 if par.recompute_interval else 4
    mp = par.accumulate_steps * blocks * per_block * _ring(act, par.mp_degree, hw.intra_node_gbs)
    dp_ranks = par.dp_degree * par.sharding_degree
    dp_bw = hw.inter_node_gbs if par.world_size > hw.devices_per_node else hw.intra_node_gbs
    dp = _ring(2 * stage_parameters(config, par), dp_ranks, dp_bw)
    pp = 2 * par.accumulate_steps * act / (hw.inter_node_gbs * 1e9) if par.pp_degree > 1 else 0.0
    return mp + dp + pp


@dataclass
class Estimate:
    """One layout's numbers; `fits` when memory_gb <= hardware memory."""

    layout: dict
    params_per_device: int
    state_gb: float
    activation_gb: float
    memory_gb: float
    fits: bool
    step_seconds: float
    tokens_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(config: PanGuConfig, par: ParallelConfig, hw: Hardware, mixed: bool = True) -> Estimate:
    params = stage_parameters(config, par)
    state = state_bytes(params, par, mixed) / GIB
    act = activation_bytes(config, par) / GIB * (1.0 if mixed else 2.0)
    total = state + act + hw.reserve_gb
    secs = step_seconds(config, par, hw)
    seq = par.seq_length or config.max_position_embeddings
    return Estimate(
        layout=par.to_dict(), params_per_device=params, state_gb=round(state, 2), activation_gb=round(act, 2),
        memory_gb=round(total, 2), fits=total <= hw.memory_gb, step_seconds=round(secs, 3),
        tokens_per_second=round(par.global_batch_size * seq / secs, 1),
    )
