"""Checkpoint conversion (MindSpore / Megatron / HF gpt_pangu -> model directory, and -> HF) and resharding.

All formats are driven by the name / split tables in `paddle_pangu.model.weight_tables`.
"""
from .api import FORMATS, convert_checkpoint
from .common import ConversionError, load_model_dir
from .hf import export_hf
from .reshard import merge_to_plain, reshard

__all__ = ["FORMATS", "ConversionError", "convert_checkpoint", "export_hf", "load_model_dir", "merge_to_plain", "reshard"]
