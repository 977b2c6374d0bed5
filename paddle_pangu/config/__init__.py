"""Configuration: model shape (PanGuConfig + presets); parallel layout lives in parallel_config."""
from .model_config import PanGuConfig
from .parallel_config import ParallelConfig, ParallelConfigError
from .presets import PRESETS, get_preset, preset_names

__all__ = ["PanGuConfig", "ParallelConfig", "ParallelConfigError", "PRESETS", "get_preset", "preset_names"]
