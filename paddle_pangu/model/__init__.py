"""PanGu-alpha model: layers (math), modeling (stack, cache, head, loss); registered with PaddleNLP's
Auto classes on import (`auto.py`)."""
from . import auto
from .modeling import (
    PanGuForCausalLM,
    PanGuModel,
    PanGuPretrainedModel,
    PanGuPretrainingCriterion,
    build_position_ids_and_mask,
)

auto.register()

__all__ = [
    "PanGuForCausalLM",
    "PanGuModel",
    "PanGuPretrainedModel",
    "PanGuPretrainingCriterion",
    "build_position_ids_and_mask",
]
