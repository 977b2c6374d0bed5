"""Planner: memory / time estimates and layout search for clusters we don't have."""
from .estimate import Hardware, estimate
from .search import plan

__all__ = ["Hardware", "estimate", "plan"]
