"""Loading a model and its tokenizer for use: generation, evaluation, fine-tuning, export."""
from __future__ import annotations

import json
import os

from ..errors import CheckpointError


def load_tokenizer(model_dir: str, tokenizer: str | None = None):
    """`tokenizer` (a directory or vocab.model) if given, else the model directory's vocab.model, else pcl-pangu's."""
    from ..tokenizer import PanGuTokenizer

    has_own = os.path.isdir(model_dir) and os.path.exists(os.path.join(model_dir, "vocab.model"))
    source = tokenizer or (model_dir if has_own else None)
    return PanGuTokenizer.from_pretrained(source) if source else PanGuTokenizer.from_default()


LORA_CONFIG = "lora_config.json"


def lora_dir_message(path: str) -> str:
    """What to run when a LoRA output directory (adapters only) is given where a model is needed."""
    base = "BASE_MODEL_DIR"
    try:
        with open(os.path.join(path, LORA_CONFIG), encoding="utf-8") as fh:
            base = json.load(fh).get("base_model_name_or_path") or base
    except (OSError, ValueError):
        pass
    return (f"{path}: holds LoRA adapters ({LORA_CONFIG}), not a model; merge them into their base model first: "
            f"`pangu merge-lora --base {base} --lora {path} --output {path.rstrip(os.sep)}_merged`, then use "
            f"--model {path.rstrip(os.sep)}_merged")


def load_model_dir(path: str):
    """PanGuForCausalLM of a model directory: a plain one via from_pretrained, one saved per rank (a
    pipeline- or tensor-parallel fine-tune's model_state.pp00/pp01..., a per-rank final_model) merged
    in memory by the weight table (convert/reshard.py, as `pangu export` does)."""
    from ..convert.reshard import detect_layout, merge_to_plain
    from ..model import PanGuForCausalLM

    mp, pp, files = detect_layout(path)
    if not files:
        return PanGuForCausalLM.from_pretrained(path)
    import sys

    hint = f" (or run it split as saved: --nproc {mp})" if pp == 1 else ""
    print(f"{path} is saved per rank (mp{mp} pp{pp}); merging the {len(files)} rank files in memory{hint}",
          file=sys.stderr, flush=True)  # stdout stays the generated text
    config, state = merge_to_plain(path)
    net = PanGuForCausalLM(config)
    missing, unexpected = net.set_state_dict(state)
    if missing or unexpected:
        raise CheckpointError(f"{path}: merged rank files lack {list(missing)[:3]} / hold unexpected {list(unexpected)[:3]}")
    return net


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, seed: int = 0):
    """A model directory (config.json + weights) or `preset:NAME` (random init) plus the PanGu tokenizer."""
    import paddle

    from ..config.presets import model_preset
    from ..model import PanGuForCausalLM

    config = model_preset(model)
    if config is not None:
        from ..config.config_file import check_fits_memory

        check_fits_memory(config, f"--model {model}")  # before allocating a single parameter
        paddle.seed(seed)
        net = PanGuForCausalLM(config)
    elif os.path.isfile(os.path.join(model, LORA_CONFIG)):
        raise CheckpointError(lora_dir_message(model))
    elif os.path.isdir(model) and os.path.exists(os.path.join(model, "config.json")):
        net = load_model_dir(model)
    else:
        raise FileNotFoundError(
            f"--model {model!r}: expected a model directory containing config.json "
            f"(from `pangu train`, `pangu convert` or save_pretrained) or preset:NAME"
        )
    net.eval()
    tok = load_tokenizer(model, tokenizer)
    check_tokenizer_fits(tok, net.config, tokenizer or model)
    return net, tok


def check_tokenizer_fits(tok, config, where: str) -> None:
    """A tokenizer whose ids reach past the model's embedding rows would index out of range (or be served
    as garbage): config.json's vocab_size vs the weights is checked at load, this checks the tokenizer."""
    from ..errors import ConfigError

    size = int(getattr(tok, "vocab_size", 0))
    if size > config.vocab_size:
        raise ConfigError(f"{where}: the tokenizer has {size} tokens but the model's vocab_size is "
                          f"{config.vocab_size} (config.json); they do not belong together")
