"""Process-group set-up: ParallelConfig -> fleet hybrid topology.

`init_topology()` is the one entry point a training / inference process
calls before building a model; the `Topology` it returns carries the
`ParallelContext` (degrees, ranks, groups: `Topology.context`) that the model
and its layer factory receive explicitly:

1. resolves the device (cpu / gpu / npu, `device.py`) and applies the NPU
   environment defaults when on Ascend;
2. validates the layout against the launched world size (and the model
   shape when given) *before* any process group exists;
3. world size 1: no fleet at all (plain layers, plain ops);
   otherwise `fleet.init(is_collective=True)` with the hybrid degrees and
   pipeline micro-batching, then installs the CPU gloo adapter
   (`cpu_backend`) when the groups are gloo - the only place it is imported.
   On CPU the adapter is installed once *before* fleet.init too, so every
   gloo sub-group gets its own rendezvous store (`cpu_backend/groups.py`:
   paddle 3.3.1 otherwise mixes up groups created together);
4. seeds: the global seed (identical on all ranks: replicated parameters and
   dropout on replicated activations agree) and fleet's
   `model_parallel_rng` stream (distinct per mp rank: sharded weights are
   initialised differently and dropout on local heads is independent).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import paddle
import paddle.distributed as dist

from ..config.parallel_config import ParallelConfig, ParallelConfigError
from .context import PLAIN, ParallelContext
from .device import DeviceError, DeviceInfo, npu_env_defaults, select_device

logger = logging.getLogger(__name__)

MODEL_PARALLEL_RNG = "model_parallel_rng"  # fleet's name (paddle.distributed.fleet.layers.mpu.random)


@dataclasses.dataclass
class Topology:
    """Where this process sits in the hybrid layout.

    Attributes:
        parallel_config: the validated layout.
        device: the device this process runs on.
        world_size, rank: global process count and rank.
        dp_rank, mp_rank, pp_rank, sharding_rank: coordinates in each axis.
        hcg: fleet's HybridCommunicateGroup, None in a single process.
        cpu_backend_active: the gloo adapter is installed in this process.
    """

    parallel_config: ParallelConfig
    device: DeviceInfo
    world_size: int = 1
    rank: int = 0
    dp_rank: int = 0
    mp_rank: int = 0
    pp_rank: int = 0
    sharding_rank: int = 0
    hcg: object = None
    cpu_backend_active: bool = False

    @property
    def mp_degree(self) -> int:
        return self.parallel_config.mp_degree

    @property
    def pp_degree(self) -> int:
        return self.parallel_config.pp_degree

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_degree - 1

    @property
    def data_rank(self) -> int:
        """Index of this process's data shard among dp * sharding replicas."""
        return self.dp_rank * self.parallel_config.sharding_degree + self.sharding_rank

    def group(self, axis: str):
        """The process group of `axis` ("dp", "mp", "pp", "sharding"); None in a single process."""
        getters = {"dp": "get_data_parallel_group", "mp": "get_model_parallel_group",
                   "pp": "get_pipe_parallel_group", "sharding": "get_sharding_parallel_group"}
        if axis not in getters:
            raise ValueError(f"Topology.group({axis!r}): expected one of {sorted(getters)}")
        return None if self.hcg is None else getattr(self.hcg, getters[axis])()

    @property
    def context(self) -> ParallelContext:
        """What the model is built with (`build_model(..., topology)` passes it to every layer)."""
        if self.hcg is None:
            return PLAIN
        return ParallelContext(mp_degree=self.mp_degree, mp_rank=self.mp_rank,
                               mp_group=self.group("mp") if self.mp_degree > 1 else None,
                               pp_degree=self.pp_degree, pp_rank=self.pp_rank, hcg=self.hcg)

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.world_size} on {self.device.type}: dp {self.dp_rank}, mp {self.mp_rank}/"
                f"{self.mp_degree}, pp {self.pp_rank}/{self.pp_degree}, sharding {self.sharding_rank}")


def launched_world_size() -> int:
    """World size set by `paddle.distributed.launch` (1 when started as a plain script)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def build_strategy(parallel_config: ParallelConfig, device_type: str = "gpu"):
    """fleet.DistributedStrategy: hybrid degrees, pipeline micro-batching, sharding stage.

    sharding_stage 2 = fleet's `split_param` (DygraphShardingOptimizerV2:
    gradients and optimizer state sharded). On CPU, TensorParallel's input
    broadcast is switched off: its `broadcast_input_data` asserts a GPU/XPU/
    custom device (paddle 3.3.1), and every mp rank reads the same batch anyway.
    """
    from paddle.distributed import fleet

    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = parallel_config.hybrid_configs()
    strategy.hybrid_configs["sharding_configs"].split_param = (
        parallel_config.sharding_degree > 1 and parallel_config.sharding_stage == 2)
    if device_type == "cpu":
        strategy.hybrid_configs["mp_configs"].need_broadcast_data = False
    # PipelineParallel reads its micro-batching from `pipeline_configs`, not hybrid_configs["pp_configs"]
    strategy.pipeline_configs = {"micro_batch_size": parallel_config.micro_batch_size,
                                 "accumulate_steps": parallel_config.accumulate_steps}
    return strategy


def seed_everything(seed: int, mp_rank: int = 0, pp_rank: int = 0, pp_degree: int = 1) -> None:
    """Global seed on every rank + fleet's model-parallel RNG stream (distinct per mp/pp rank).

    The local seed follows fleet's `model_parallel_random_seed`:
    seed + 1 + mp_rank * pp_degree + pp_rank.
    """
    from paddle.distributed.fleet.meta_parallel import get_rng_state_tracker

    tracker = get_rng_state_tracker()
    tracker.reset()
    tracker.add(MODEL_PARALLEL_RNG, seed + 1 + mp_rank * pp_degree + pp_rank)
    paddle.seed(seed)


def collective_env(device: DeviceInfo, local_rank: int, environ=None) -> dict:
    """Point `paddle.distributed.init_parallel_env` (which reads these variables) at this device's backend.

    `paddle.distributed.launch` sets them from the devices *it* sees: xccl + `FLAGS_selected_npus` for every
    worker when it has a custom device, gloo when it has none. Both can disagree with the run's device: a
    launcher started without the plugin loaded (`python -m paddle.distributed.launch tools/train.py` with
    `PANGU_TEST_NPU=1`: the workers load it, the launcher does not) gave gloo and a CPU place to an `npu`
    run, which then trained on the CPU without a word; `--device cpu` on a machine with an NPU plugin got
    xccl for CPU tensors. Returns what was changed.
    """
    environ = os.environ if environ is None else environ
    if device.type == "gpu":  # nccl: Paddle's default when the variable is unset; left as launched
        return {}
    want = {"PADDLE_DISTRI_BACKEND": device.backend}
    if device.type == "npu":
        want["PADDLE_XCCL_BACKEND"] = "npu"
        selected = environ.get("FLAGS_selected_npus", "")
        if not selected or "," in selected:  # the launcher's list for one process per node, or none
            want["FLAGS_selected_npus"] = str(local_rank)
    changed = {k: v for k, v in want.items() if environ.get(k) != v}
    environ.update(changed)
    return changed


def _init_fleet(parallel_config: ParallelConfig, device: DeviceInfo, force_cpu_backend: bool,
                local_rank: int = 0) -> Topology:
    from paddle.distributed import fleet

    changed = collective_env(device, local_rank)
    if changed:
        logger.info("process-group environment for %s: %s", device.type, changed)
    on_cpu = device.type == "cpu"
    if on_cpu:  # the adapter must be in place before fleet.init creates the groups
        from . import cpu_backend  # the one import of the gloo adapter (docs/ARCHITECTURE.md)

        cpu_backend.install(force=force_cpu_backend)
    fleet.init(is_collective=True, strategy=build_strategy(parallel_config, device.type))
    hcg = fleet.get_hybrid_communicate_group()
    active = cpu_backend.install(hcg, force=force_cpu_backend) if on_cpu else False
    placed = paddle.get_device()  # fleet.init sets the place from the environment above
    if placed.split(":")[0] != device.type:
        raise DeviceError(f"fleet placed this {device.type} run on {placed!r} "
                          f"(PADDLE_DISTRI_BACKEND={os.environ.get('PADDLE_DISTRI_BACKEND')})")
    return Topology(
        parallel_config=parallel_config,
        device=device,
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        dp_rank=hcg.get_data_parallel_rank(),
        mp_rank=hcg.get_model_parallel_rank(),
        pp_rank=hcg.get_stage_id(),
        sharding_rank=hcg.get_sharding_parallel_rank(),
        hcg=hcg,
        cpu_backend_active=active,
    )


def init_topology(parallel_config: ParallelConfig, device: DeviceInfo | str = "auto", model_config=None,
                  force_cpu_backend: bool = False) -> Topology:
    """Validate the layout, create the process groups, seed, and describe this process.

    Args:
        parallel_config: the layout; checked against the launched world size
            (and `model_config` when given) before any group is created.
        device: "auto" | "cpu" | "gpu" | "npu" or a resolved DeviceInfo.
        model_config: PanGuConfig to check divisibility / pipeline split against.
        force_cpu_backend: install the gloo adapter on an untested paddle version.

    Raises:
        ParallelConfigError: layout impossible for this job or model.
    """
    device = select_device(device) if isinstance(device, str) else device
    npu_env_defaults(device)
    world_size = launched_world_size()
    if model_config is not None:
        parallel_config.validate(model_config, world_size)
    elif world_size != parallel_config.world_size:
        raise ParallelConfigError(
            f"ParallelConfig needs world_size {parallel_config.world_size} (dp*mp*pp*sharding) but the job has "
            f"{world_size}; launch with `python -m paddle.distributed.launch --nproc_per_node "
            f"{parallel_config.world_size}` or change the degrees"
        )
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", os.environ.get("PADDLE_RANK_IN_NODE", "0")))
    paddle.set_device(device.paddle_device(local_rank))
    if world_size == 1:
        topo = Topology(parallel_config=parallel_config, device=device)
    else:
        topo = _init_fleet(parallel_config, device, force_cpu_backend, local_rank)
    seed_everything(parallel_config.seed, topo.mp_rank, topo.pp_rank, parallel_config.pp_degree)
    logger.info("topology: %s", topo.describe())
    return topo
