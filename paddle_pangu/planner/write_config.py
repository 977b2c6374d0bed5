"""A planned layout as a run YAML that `pangu train` accepts unchanged.

The file is built as a plain mapping, read back through the run config's own loader
(`training.run_config.load_run_config`) and validated against the planned world size before
`write_run_config` returns, so a written file is one `pangu train` has already accepted.
"""
from __future__ import annotations

import os

import yaml

from ..config.parallel_config import ParallelConfig
from ..errors import ConfigError, UsageError
from ..utils.yaml_file import read_yaml
from .estimate import Estimate, Hardware

LAYOUT_FIELDS = ("dp_degree", "mp_degree", "pp_degree", "sharding_degree", "sharding_stage", "micro_batch_size",
                 "accumulate_steps", "recompute_interval")


def device_type(hw: Hardware) -> str:
    """train.device for a device preset."""
    if hw.name.startswith("ascend"):
        return "npu"
    return "cpu" if hw.name == "cpu" else "gpu"


def parallel_section(par: ParallelConfig) -> dict:
    """The `parallel:` mapping of a run YAML for `par` (global batch derived from accumulate_steps)."""
    return {k: getattr(par, k) for k in LAYOUT_FIELDS}


def run_config_dict(model_preset: str, par: ParallelConfig, hw: Hardware, seq_len: int,
                    base: dict | None = None) -> dict:
    """A run config mapping: `base`'s sections (a run YAML already in use), or synthetic data, plus the layout."""
    data = {k: v for k, v in (base or {}).items() if k not in ("parallel", "world_size")}
    data["model"] = {**data.get("model", {}), "preset": model_preset}
    data.setdefault("data", {"synthetic": {"num_samples": max(4 * par.global_batch_size, 256)}})
    data["data"] = {**data["data"], "seq_len": seq_len}
    amp = {"float32": {"dtype": "float32"}}.get(hw.dtype, {"dtype": hw.dtype, "level": "O2"})
    data["amp"] = {**data.get("amp", {}), **amp}
    data["train"] = {**data.get("train", {}), "device": device_type(hw)}
    data["world_size"] = par.world_size
    data["parallel"] = parallel_section(par)
    return data


def _header(est: Estimate, hw: Hardware) -> str:
    terms = ", ".join(f"{k} {v:.2f}" for k, v in est.terms_gb.items())
    return (f"# Written by `pangu plan --write-config` for {hw.devices} x {hw.name} ({hw.memory_gb:g} GB, "
            f"{hw.dtype}).\n# Estimate per device: {est.memory_gb:.2f} GB ({terms});\n"
            f"# step {est.step_seconds:.3f} s, {est.tokens_per_second:.0f} tokens/s (formulas: docs/PLANNER.md).\n")


def write_run_config(path: str, mapping: dict, est: Estimate, hw: Hardware) -> None:
    """Write `mapping` as YAML, then load and validate it as `pangu train` will (raises on any mismatch)."""
    from ..training.run_config import load_run_config

    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(_header(est, hw))
        yaml.safe_dump(mapping, f, sort_keys=False, default_flow_style=False)
    cfg = load_run_config(path)
    _, par = cfg.validate(mapping["world_size"])
    if par.world_size != hw.devices:
        raise UsageError(f"{path}: the layout needs {par.world_size} processes, the plan was for {hw.devices}")


def load_base(path: str | None) -> dict | None:
    """The mapping of a run YAML whose non-parallel sections a written config keeps (the one YAML reader)."""
    if not path:
        return None
    return read_yaml(path, "--base-config file", ConfigError)
