"""Enumerate valid layouts for a cluster, estimate each, rank those that fit by step time."""
from __future__ import annotations

import warnings

from ..config import PanGuConfig
from ..config.parallel_config import ParallelConfig, ParallelConfigError
from .estimate import Estimate, Hardware, estimate


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(config: PanGuConfig, hw: Hardware, global_batch: int, seq_length: int | None = None):
    """Every ParallelConfig that validates for this model and world size (mp stays inside a node)."""
    mps = [t for t in _divisors(hw.devices_per_node) if hw.devices % t == 0]
    for mp in mps:
        for pp in _divisors(config.num_layers):
            if hw.devices % (mp * pp):
                continue
            rest = hw.devices // (mp * pp)
            for sharding in sorted({1, rest}):
                for stage in ((1, 2) if sharding > 1 else (1,)):
                    for micro in (1, 2, 4, 8):
                        for recompute in (0, 1):
                            par = _layout(mp, pp, rest // sharding, sharding, stage, micro, recompute, global_batch, seq_length)
                            if par is not None and _valid(par, config, hw.devices):
                                yield par


def _layout(mp, pp, dp, sharding, stage, micro, recompute, global_batch, seq_length):
    try:
        return ParallelConfig(dp_degree=dp, mp_degree=mp, pp_degree=pp, sharding_degree=sharding,
                              sharding_stage=stage, micro_batch_size=micro, global_batch_size=global_batch,
                              recompute_interval=recompute, seq_length=seq_length)
    except ParallelConfigError:
        return None


def _valid(par: ParallelConfig, config: PanGuConfig, world: int) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            par.validate(config, world)
    except ParallelConfigError:
        return False
    return True


def plan(config: PanGuConfig, hw: Hardware, global_batch: int, seq_length: int | None = None,
         top: int = 10) -> tuple[list[Estimate], int]:
    """The `top` fitting layouts, fastest first, and how many layouts were considered."""
    estimates = [estimate(config, par, hw) for par in candidate_layouts(config, hw, global_batch, seq_length)]
    fitting = sorted((e for e in estimates if e.fits), key=lambda e: (e.step_seconds, e.memory_gb))
    return fitting[:top], len(estimates)
