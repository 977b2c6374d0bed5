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
        paddle.seed(seed)
        net = PanGuForCausalLM(get_preset(model.split(":", 1)[1]))
    elif os.path.isdir(model) and os.path.exists(os.path.join(model, "config.json")):
        net = PanGuForCausalLM.from_pretrained(model)
    else:
        raise FileNotFoundError(
            f"--model {model!r}: expected a model directory containing config.json "
            f"(from `pangu train`, `pangu convert` or save_pretrained) or preset:NAME"
        )
    net.eval()
    return net, load_tokenizer(model, tokenizer)
