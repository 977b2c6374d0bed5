"""ParallelContext: what a model needs to know about the parallel layout, passed explicitly.

`parallel.topology.init_topology` builds it once per process (`Topology.context`);
`model/*` receives it as a constructor argument and hands it to the layer
factory (`parallel/layers.py`), as Megatron-core layers receive their config
and process group. Nothing below reads the degree back from fleet's globals:
a model built without a context is plain, whatever fleet was told.

The one other source is PaddleNLP's convention (`from_pretrained(...,
tensor_parallel_degree=N)` sets `config.tensor_parallel_degree` / `_rank`):
`from_model_config` maps it onto the same context, taking the group from
fleet's hybrid group, which PaddleNLP's Trainer has created by then.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ParallelContext:
    """Degrees, ranks and groups of this process (defaults: one plain process).

    Attributes:
        mp_degree, mp_rank, mp_group: tensor parallelism; the group is a
            paddle `Group` (None when mp_degree == 1).
        pp_degree, pp_rank: pipeline stages.
        hcg: fleet's HybridCommunicateGroup when fleet runs the job (the
            pipeline layer needs its topology); None in a plain process.
    """

    mp_degree: int = 1
    mp_rank: int = 0
    mp_group: object = None
    pp_degree: int = 1
    pp_rank: int = 0
    hcg: object = None

    def __post_init__(self):
        if self.mp_degree < 1 or not 0 <= self.mp_rank < self.mp_degree:
            raise ConfigError(f"ParallelContext: mp_rank={self.mp_rank} is not a rank of mp_degree={self.mp_degree}")
        if self.mp_degree > 1 and self.mp_group is None:
            raise ConfigError(f"ParallelContext: mp_degree={self.mp_degree} needs its process group (mp_group)")
        if self.mp_group is not None and getattr(self.mp_group, "nranks", self.mp_degree) != self.mp_degree:
            raise ConfigError(f"ParallelContext: mp_group has {self.mp_group.nranks} ranks, mp_degree={self.mp_degree}")

    @property
    def tensor_parallel(self) -> bool:
        return self.mp_degree > 1

    def __deepcopy__(self, memo):  # process groups are handles, never copied
        return self


PLAIN = ParallelContext()


def from_model_config(config) -> ParallelContext:
    """The context PaddleNLP's convention implies: `config.tensor_parallel_degree` (default 1: plain)."""
    if int(getattr(config, "tensor_parallel_degree", 1) or 1) <= 1:
        return PLAIN
    return from_fleet(config)


def from_fleet(config) -> ParallelContext:
    """The context of a PaddleNLP job: fleet's hybrid group (PaddleNLP's Trainer has run fleet.init) with
    `config.tensor_parallel_degree` / `tensor_parallel_rank`, which must agree with it."""
    from .fleet_compat import hybrid_group

    degree = int(getattr(config, "tensor_parallel_degree", 1) or 1)
    hcg = hybrid_group()
    if hcg is None:
        raise ConfigError(f"config.tensor_parallel_degree={degree}: fleet is not initialised; build the model "
                          "inside the PaddleNLP Trainer / after fleet.init, or pass a ParallelContext")
    if hcg.get_model_parallel_world_size() != degree:
        raise ConfigError(f"config.tensor_parallel_degree={degree} but fleet's model-parallel group has "
                          f"{hcg.get_model_parallel_world_size()} ranks")
    return ParallelContext(mp_degree=degree, mp_rank=hcg.get_model_parallel_rank(),
                           mp_group=hcg.get_model_parallel_group() if degree > 1 else None,
                           pp_degree=hcg.get_pipe_parallel_world_size(), pp_rank=hcg.get_stage_id(), hcg=hcg)


def resolve(config, context: ParallelContext | None) -> ParallelContext:
    """The context a model is built with: the one passed, else PaddleNLP's config fields, else plain."""
    if context is None:
        return from_model_config(config)
    degree = int(getattr(config, "tensor_parallel_degree", 1) or 1)
    if degree > 1 and degree != context.mp_degree:
        raise ConfigError(f"config.tensor_parallel_degree={degree} disagrees with the parallel context "
                          f"(mp_degree={context.mp_degree})")
    return context
