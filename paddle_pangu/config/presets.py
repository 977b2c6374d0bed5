"""Named PanGu-alpha shapes.

Source for 350m / 2.6b / 13b / 200b: docs/REFERENCE.md,
"Model sizes" (from the reference code; 2.6B has 32 heads, not 40).
`tiny` and `mini` are ours: tiny is for unit tests, mini for CPU demos.
"""
from __future__ import annotations

from .model_config import PanGuConfig

PRESETS: dict[str, dict] = {
    # ours: smallest shape that still exercises every code path (2 blocks + query layer)
    "tiny": dict(hidden_size=64, num_layers=3, num_attention_heads=4, ffn_hidden_size=256, max_position_embeddings=128),
    # ours: the CPU main-job model (~13M params incl. the 40k x 256 embedding)
    "mini": dict(hidden_size=256, num_layers=4, num_attention_heads=4, ffn_hidden_size=1024, max_position_embeddings=256),
    # REF table rows
    "350m": dict(hidden_size=1024, num_layers=24, num_attention_heads=16, ffn_hidden_size=4096, max_position_embeddings=1024),
    "2.6b": dict(hidden_size=2560, num_layers=32, num_attention_heads=32, ffn_hidden_size=10240, max_position_embeddings=1024),
    "13b": dict(hidden_size=5120, num_layers=40, num_attention_heads=40, ffn_hidden_size=20480, max_position_embeddings=1024),
    "200b": dict(hidden_size=16384, num_layers=64, num_attention_heads=128, ffn_hidden_size=65536, max_position_embeddings=1024),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> PanGuConfig:
    """Build a PanGuConfig from a preset name plus field overrides."""
    key = name.lower().replace("pangu-", "").replace("pangu_", "")
    if key not in PRESETS:
        raise KeyError(f"unknown PanGu preset {name!r}; expected one of {sorted(PRESETS)}")
    return PanGuConfig(**{**PRESETS[key], **overrides})


PRESET_PREFIX = "preset:"


def model_preset(model: str, where: str = "--model") -> PanGuConfig | None:
    """The PanGuConfig that a `preset:NAME` model argument names (a randomly initialised model of that shape),
    or None when `model` is something else (a model or export directory). The one reading of `preset:NAME`
    for every command that takes a model; an unknown NAME is a UsageError naming `where` and the presets."""
    if not model.startswith(PRESET_PREFIX):
        return None
    from ..errors import UsageError

    try:
        return get_preset(model[len(PRESET_PREFIX):])
    except KeyError as exc:
        raise UsageError(f"{where} {model!r}: {exc.args[0]}") from None
