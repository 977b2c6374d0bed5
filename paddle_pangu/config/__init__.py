"""Configuration: model shape (PanGuConfig + presets); parallel layout lives in parallel_config."""
from .model_config import PanGuConfig
from .presets import PRESETS, get_preset, preset_names

__all__ = ["PanGuConfig", "PRESETS", "get_preset", "preset_names"]
