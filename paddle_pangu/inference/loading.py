"""Loading a model and its tokenizer for use: generation, evaluation, fine-tuning, export."""
from __future__ import annotations

import os


def load_tokenizer(model_dir: str, tokenizer: str | None = None):
    """`tokenizer` (a directory or vocab.model) if given, else the model directory's vocab.model, else pcl-pangu's."""
    from ..tokenizer import PanGuTokenizer

    has_own = os.path.isdir(model_dir) and os.path.exists(os.path.join(model_dir, "vocab.model"))
    source = tokenizer or (model_dir if has_own else None)
    return PanGuTokenizer.from_pretrained(source) if source else PanGuTokenizer.from_default()


def load_model_and_tokenizer(model: str, tokenizer: str | None = None, seed: int = 0):
    """A model directory (config.json + weights) or `preset:NAME` (random init) plus the PanGu tokenizer."""
    import paddle

    from ..config import get_preset
    from ..model import PanGuForCausalLM

    if model.startswith("preset:"):
        from ..config.config_file import check_fits_memory
        from ..errors import UsageError

        try:
            config = get_preset(model.split(":", 1)[1])
        except KeyError as exc:
            raise UsageError(f"--model {model!r}: {exc.args[0]}") from None
        check_fits_memory(config, f"--model {model}")  # before allocating a single parameter
        paddle.seed(seed)
        net = PanGuForCausalLM(config)
    elif os.path.isdir(model) and os.path.exists(os.path.join(model, "config.json")):
        net = PanGuForCausalLM.from_pretrained(model)
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
