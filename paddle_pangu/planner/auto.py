"""`pangu train --parallel auto`: the planner picks the layout for the world size at hand.

The run's model, sequence length, AMP dtype and global batch (its `parallel:` section's
micro_batch_size x accumulate_steps x data-parallel ranks) stay; the layout is the planner's fastest
that fits one device of the run's type (on CPU the measured `cpu` preset, without sharding stage 2:
paddle 3.3.1's gloo stage 2 stops reducing gradients after step 1, docs/PLATFORM.md). Every rank computes
the same plan (a pure function of the config and the world size), so no collective is needed.
"""
from __future__ import annotations

import json

from ..errors import UsageError
from .estimate import Hardware
from .hardware import get_device_preset
from .search import consider
from .write_config import parallel_section

DEVICE_PRESET = {"cpu": "cpu", "npu": "ascend910", "gpu": "a100-80g"}


def device_preset_for(device: str) -> str:
    """The planner preset for `train.device` (auto: what this paddle build has)."""
    if device == "auto":
        import paddle

        if paddle.is_compiled_with_cuda():
            device = "gpu"
        else:
            device = "npu" if "npu" in paddle.device.get_all_custom_device_type() else "cpu"
    return DEVICE_PRESET[device]


def choose(cfg, world: int):
    """(parallel section dict, Estimate, Hardware, candidates) for RunConfig `cfg` on `world` processes."""
    model_cfg = cfg.model_config()
    par = cfg.parallel_config()
    hw = Hardware.from_preset(get_device_preset(device_preset_for(cfg.train.device)), world, cfg.amp.dtype)
    cands = consider(model_cfg, hw, par.global_batch_size, cfg.seq_len, allow_stage2=hw.name != "cpu")
    fitting = sorted((c for c in cands if c.fits), key=lambda c: c.rank)
    if not fitting:
        raise UsageError(f"--parallel auto: no layout of {model_cfg.num_parameters() / 1e6:.0f}M parameters with "
                         f"global batch {par.global_batch_size} fits {world} x {hw.name} ({hw.memory_gb:g} GB); "
                         f"see `pangu plan --explain`")
    best = fitting[0]
    return parallel_section(best.parallel), best.estimate, hw, cands


def override_for(cfg, world: int) -> tuple[str, str]:
    """The `parallel={...}` override that sets the chosen layout, and one log line with its estimates."""
    section, est, hw, cands = choose(cfg, world)
    terms = ", ".join(f"{k} {v * 1024:.0f} MB" for k, v in est.terms_gb.items())
    fits = sum(c.fits for c in cands)
    line = (f"parallel auto: {', '.join(f'{k}={v}' for k, v in section.items())} for {world} x {hw.name} "
            f"({fits} of {len(cands)} layouts fit); estimate {est.memory_gb * 1024:.0f} MB per process ({terms}), "
            f"step {est.step_seconds:.3f} s")
    return f"parallel={json.dumps(section)}", line
