"""`config.json` of a model directory, validated before anything is built from it.

PaddleNLP's `from_pretrained` trusts config.json: `num_layers: 1000000000`
allocated until 4 GB, `num_attention_heads: 0` raised ZeroDivisionError,
`"64abc"`, a JSON list or a truncated file gave 8-15-frame tracebacks.
`read_config_file` checks the file the way run configs are checked
(`config/loader.py`): one `ConfigError` line naming the file, the field, the
value and the expected range. `check_fits_memory` then compares the fp32
parameter bytes with the memory this machine has available, so an oversized
(or mistyped) shape is refused before a single tensor is allocated.
"""
from __future__ import annotations

import os

from ..errors import ConfigError
from ..utils.json_file import read_json

# field: (low, high) inclusive; the highs are far beyond any PanGu model (200B: H 16384, 64 layers,
# REF "Model sizes") and keep a typo from allocating the machine away
INT_FIELDS = {
    "vocab_size": (1, 1 << 24), "hidden_size": (1, 1 << 17), "num_layers": (1, 4096),
    "num_attention_heads": (1, 1 << 14), "ffn_hidden_size": (1, 1 << 20), "max_position_embeddings": (1, 1 << 20),
}
ALIASES = {"num_hidden_layers": "num_layers", "n_head": "num_attention_heads"}  # PanGuConfig.attribute_map
TOKEN_FIELDS = ("eod_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
FLOAT_FIELDS = {"hidden_dropout_prob": (0.0, 1.0), "attention_probs_dropout_prob": (0.0, 1.0),
                "layer_norm_eps": (0.0, 1.0), "initializer_range": (0.0, 10.0)}


def _int(where: str, key: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key}={value!r}: expected an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise ConfigError(f"{where}: {key}={value}: expected an integer in [{low}, {high}]")
    return value


def validate_config_dict(data, where: str) -> dict:
    """The shape fields of a PanGu config mapping, checked (ConfigError naming `where` and the field)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of model fields, got a {type(data).__name__}")
    data = {ALIASES.get(k, k): v for k, v in data.items()}
    for key, (low, high) in INT_FIELDS.items():
        if key in data and not (key == "ffn_hidden_size" and data[key] is None):
            _int(where, key, data[key], low, high)
    for key, (low, high) in FLOAT_FIELDS.items():
        value = data.get(key, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{where}: {key}={value!r}: expected a number in [{low}, {high}]")
    hidden, heads = data.get("hidden_size", 2560), data.get("num_attention_heads", 32)
    if hidden % heads:
        raise ConfigError(f"{where}: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    vocab = data.get("vocab_size", 40000)
    for key in TOKEN_FIELDS:
        if data.get(key) is not None:
            _int(where, key, data[key], 0, vocab - 1)  # an id the embedding has no row for
    return data


def read_config_file(path: str) -> dict:
    """config.json as a validated mapping (ConfigError: missing, not UTF-8 JSON, not an object, bad field)."""
    # 1 MB: a model config.json is a few hundred bytes; the cap keeps a wrong file from being read whole
    data = read_json(path, "a model config.json: a JSON object of model fields", ConfigError, expect=None,
                     max_bytes=1 << 20)
    return validate_config_dict(data, path)


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_memory(config, what: str, bytes_per_param: float = 4) -> None:
    """Refuse (ConfigError) a model whose fp32 parameters alone exceed this machine's available memory."""
    if os.environ.get("PANGU_SKIP_MEMORY_CHECK", "").strip() in ("1", "true", "yes"):
        return
    need = int(config.num_parameters() * bytes_per_param)
    have = available_memory_bytes()
    if have is not None and need > have:
        raise ConfigError(f"{what}: {config.num_parameters() / 1e9:.2f}B parameters need {need / 2**30:.1f} GiB "
                          f"(fp32) here, this machine has {have / 2**30:.1f} GiB available; use a smaller model or a "
                          "parallel layout that splits it (set PANGU_SKIP_MEMORY_CHECK=1 to try anyway)")
