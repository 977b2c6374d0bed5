"""Inference: generation with a KV cache."""
from .generation import SamplingConfig, generate, generate_text

__all__ = ["SamplingConfig", "generate", "generate_text"]
