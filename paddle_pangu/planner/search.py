"""Enumerate layouts for a cluster, say why each rejected one cannot run, rank the rest by step time.

Every combination of mp (a divisor of the devices per node: tensor parallelism stays inside a
node), pp (a divisor of the devices left), data parallelism either plain (dp) or as the sharding
group (ZeRO stage 1 or 2), micro-batch 1/2/4/8 and recompute off / every block is considered.
A layout is rejected by the first failing check: the batch split or a divisibility of
`ParallelConfig.validate` (its message names the field), then memory (which terms overflow);
when only the batch split fails, the memory verdict is added as well.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from ..config import PanGuConfig
from ..config.parallel_config import ParallelConfig, ParallelConfigError
from .estimate import Estimate, Hardware, estimate

MICRO_BATCHES = (1, 2, 4, 8)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class Candidate:
    """One layout considered: `estimate` when it validates, `reason` when it was rejected."""

    degrees: dict
    parallel: ParallelConfig | None = None
    estimate: Estimate | None = None
    reason: str = ""
    rank: int = 0  # 1-based position among the fitting layouts, fastest first
    extra: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.estimate is not None and not self.reason


def layout_grid(config: PanGuConfig, hw: Hardware, allow_stage2: bool = True):
    """(mp, pp, dp, sharding, stage, micro, recompute) tuples for this world size."""
    world = hw.devices
    for mp in (t for t in _divisors(hw.devices_per_node) if world % t == 0):
        for pp in _divisors(world // mp):
            rest = world // (mp * pp)
            for sharding in sorted({1, rest}):
                for stage in ((1, 2) if sharding > 1 and allow_stage2 else (1,)):
                    for micro in MICRO_BATCHES:
                        for recompute in (0, 1):
                            yield mp, pp, rest // sharding, sharding, stage, micro, recompute


def _build(degrees: dict, config: PanGuConfig, world: int, global_batch: int, seq_length):
    """ParallelConfig for `degrees` validated for this model and world size, or the reason it fails."""
    try:
        par = ParallelConfig(**degrees, global_batch_size=global_batch, seq_length=seq_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            par.validate(config, world)
    except ParallelConfigError as exc:
        return None, f"invalid: {exc}"
    return par, ""


def _memory_only(degrees: dict, config: PanGuConfig, world: int, seq_length):
    """The layout with one micro-batch per step: memory does not depend on the global batch (pp aside)."""
    acc = max(degrees["pp_degree"], 1)
    par, reason = _build(degrees, config, world, degrees["micro_batch_size"] * acc * degrees["dp_degree"]
                         * degrees["sharding_degree"], seq_length)
    return par if not reason else None


def oom_reason(est: Estimate, hw: Hardware) -> str:
    """'out of memory by X GB (needs Y of Z): terms ...' with every term in GB, largest first."""
    over = est.memory_gb - hw.memory_gb
    terms = ", ".join(f"{k.replace('optimizer', 'optimizer states')} {v:.2f}"
                      for k, v in sorted(est.terms_gb.items(), key=lambda kv: -kv[1]))
    return f"out of memory by {over:.2f} GB (needs {est.memory_gb:.2f} of {hw.memory_gb:g} GB): {terms}"


def consider(config: PanGuConfig, hw: Hardware, global_batch: int, seq_length: int | None = None,
             allow_stage2: bool = True) -> list[Candidate]:
    """Every layout of the grid with its estimate or rejection reason; fitting ones ranked by step time."""
    names = ("mp_degree", "pp_degree", "dp_degree", "sharding_degree", "sharding_stage", "micro_batch_size",
             "recompute_interval")
    out = []
    for values in layout_grid(config, hw, allow_stage2):
        degrees = dict(zip(names, values))
        par, reason = _build(degrees, config, hw.devices, global_batch, seq_length)
        cand = Candidate(degrees, par, reason=reason)
        if par is not None:
            cand.estimate = estimate(config, par, hw)
            if not cand.estimate.fits:
                cand.reason = oom_reason(cand.estimate, hw)
        elif "global_batch_size" in reason:  # the batch does not split; would the memory fit anyway?
            probe = _memory_only(degrees, config, hw.devices, seq_length)
            est = estimate(config, probe, hw) if probe is not None else None
            if est is not None and not est.fits:
                cand.reason += f"; and {oom_reason(est, hw)}"
        out.append(cand)
    # equal estimates: fewer, larger micro-batches (the time model has no per-micro-batch overhead), then less memory
    fitting = sorted((c for c in out if c.fits),
                     key=lambda c: (c.estimate.step_seconds, c.parallel.accumulate_steps, c.estimate.memory_gb))
    for i, c in enumerate(fitting, 1):
        c.rank = i
    return out


def plan(config: PanGuConfig, hw: Hardware, global_batch: int, seq_length: int | None = None,
         top: int = 10, allow_stage2: bool = True) -> tuple[list[Estimate], int]:
    """The `top` fitting layouts, fastest first, and how many valid layouts were estimated."""
    cands = consider(config, hw, global_batch, seq_length, allow_stage2)
    fitting = sorted((c for c in cands if c.fits), key=lambda c: c.rank)
    return [c.estimate for c in fitting[:top]], sum(c.estimate is not None for c in cands)


def find(cands: list[Candidate], **degrees) -> Candidate:
    """The candidate whose degrees include every given field (tests, docs)."""
    for c in cands:
        if all(c.degrees.get(k) == v for k, v in degrees.items()):
            return c
    raise KeyError(f"no layout {degrees} considered")

