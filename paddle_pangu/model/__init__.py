"""PanGu-alpha model: layers (math), modeling (stack, cache, head, loss)."""
from .modeling import (
    PanGuForCausalLM,
    PanGuModel,
    PanGuPretrainedModel,
    PanGuPretrainingCriterion,
    build_position_ids_and_mask,
)

__all__ = [
    "PanGuForCausalLM",
    "PanGuModel",
    "PanGuPretrainedModel",
    "PanGuPretrainingCriterion",
    "build_position_ids_and_mask",
]
