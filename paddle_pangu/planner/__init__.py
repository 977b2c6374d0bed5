"""Planner: memory / time estimates and layout search for clusters we don't have (docs/PLANNER.md)."""
from .estimate import Hardware, estimate, memory_terms
from .hardware import PRESETS as DEVICE_PRESETS, get_device_preset
from .search import consider, plan

__all__ = ["DEVICE_PRESETS", "Hardware", "consider", "estimate", "get_device_preset", "memory_terms", "plan"]
