"""Inference: generation with a KV cache."""
from .generation import generate, generate_text
from .sampling import SamplingConfig

__all__ = ["SamplingConfig", "generate", "generate_text"]
