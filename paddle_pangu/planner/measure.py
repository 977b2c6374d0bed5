"""Measure one short training run's memory and step time per process (the planner's ground truth).

Run by `planner/entry/measure_worker.py`, alone (one process) or under `paddle.distributed.launch`
(`planner/validate.py::run_case` launches it).

How memory is measured: Paddle's host allocator statistics
(`paddle.base.core.host_memory_stat_{current,peak}_value("Allocated", 0)`), which count every
byte a CPU tensor holds, exactly, with no allocator rounding and no Python / gloo / libc heap.
Term by term:

- weights: bytes of this rank's parameters (`model.parameters()`);
- gradients: bytes of the `.grad` tensors alive after the last step (cleared to zero, not freed);
- optimizer: bytes of the optimizer's accumulators (AdamW moments, beta powers, master weights);
- persistent: allocator "current" after the last step (weights + grads + optimizer + any
  communication buffers fleet keeps, e.g. DataParallel's fused gradient groups);
- peak: the allocator's peak over the run; peak - persistent is the activation and transient
  memory of the heaviest forward/backward.

Process peak RSS (`VmHWM` in /proc/self/status) minus the RSS before the model was built is
recorded beside it as a cross-check that includes the libc heap and the gloo buffers.

The process gets the same CPU runtime set-up as `pangu train` (`paddle_pangu.runtime.apply`).
Step time: wall seconds and this process's CPU seconds (`time.process_time`) per optimizer step,
first step excluded (lazy optimizer-state creation), median of the rest.
"""
from __future__ import annotations

import statistics
import time


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _inner_optimizers(opt):
    """The optimizer and every `_inner_opt` it wraps (fleet's hybrid / sharding wrappers)."""
    seen = []
    while opt is not None and opt not in seen:
        seen.append(opt)
        opt = getattr(opt, "_inner_opt", None) or getattr(opt, "_optim", None)
    return seen


def _nbytes(t) -> int:
    if t is None or not hasattr(t, "_numel"):
        return 0
    try:
        return int(t._numel()) * t.element_size()
    except Exception:  # an uninitialised / freed tensor
        return 0


def optimizer_bytes(opt) -> int:
    """Bytes of accumulators and master weights of the innermost optimizer holding any."""
    seen_ids, total = set(), 0
    for o in _inner_optimizers(opt):
        for per_param in getattr(o, "_accumulators", {}).values():
            for t in per_param.values():
                if id(t) not in seen_ids:
                    seen_ids.add(id(t))
                    total += _nbytes(t)
        for t in getattr(o, "_master_weights", {}).values():
            if id(t) not in seen_ids:
                seen_ids.add(id(t))
                total += _nbytes(t)
    return total


def measure(run_config: dict, steps: int) -> dict:
    import paddle
    from paddle.base import core

    from paddle_pangu.training.run_config import run_config_from_dict
    from paddle_pangu.training.trainer import Trainer

    rss0 = _status_kb("VmRSS") * 1024
    alloc0 = core.host_memory_stat_current_value("Allocated", 0)
    trainer = Trainer(run_config_from_dict(run_config, source="measure"))
    after_build = core.host_memory_stat_current_value("Allocated", 0) - alloc0
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    params = list(trainer.model.parameters())
    return {
        "rank": trainer.rank,
        "pp_rank": trainer.topo.pp_rank,
        "sharding_rank": trainer.topo.sharding_rank,
        "weights": sum(_nbytes(p) for p in params),
        "gradients": sum(_nbytes(p.grad) for p in params),
        "optimizer": optimizer_bytes(trainer.optimizer),
        "after_build": int(after_build),
        "persistent": int(core.host_memory_stat_current_value("Allocated", 0) - alloc0),
        "peak": int(core.host_memory_stat_peak_value("Allocated", 0) - alloc0),
        "rss_peak_delta": _status_kb("VmHWM") * 1024 - rss0,
        "step_wall": statistics.median(wall[1:] or wall),
        "step_cpu": statistics.median(cpu[1:] or cpu),
        "paddle": paddle.__version__,
    }
