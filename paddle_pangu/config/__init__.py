"""Configuration: model shape (PanGuConfig + presets), parallel layout (ParallelConfig), the typed YAML loader.

Names are imported on first use, so `config.loader` and `config.parallel_config`
(pure Python) do not pull in PaddleNLP, which `PanGuConfig` needs.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "PanGuConfig": "model_config",
    "ParallelConfig": "parallel_config",
    "ParallelConfigError": "parallel_config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "preset_names": "presets",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
