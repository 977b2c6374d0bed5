"""Registration of PanGu with PaddleNLP's Auto classes, so its own tooling opens our directories.

After `import paddle_pangu.model` (which calls `register()`)::

    AutoConfig.from_pretrained(d)            # config.json "model_type": "pangu_alpha" -> PanGuConfig
    AutoModelForCausalLM.from_pretrained(d)  # config.json "architectures": ["PanGuForCausalLM"]
    AutoTokenizer.from_pretrained(d)         # tokenizer_config.json "tokenizer_class": "PanGuTokenizer"

PaddleNLP 3.0.0b4 has registries for configs (`AutoConfig.register`) and tokenizers
(`AutoTokenizer.register`, found by the `tokenizer_class` name). Its model Auto classes have none:
they import `paddlenlp.transformers.<name>.modeling` for the name in `architectures`, so their class
lookup is wrapped to consult the PanGu architectures table first and fall back to PaddleNLP's own
lookup for every other model.
"""
from __future__ import annotations

import io
import json

_registered = False


def _architectures(config_file_path, config) -> list[str]:
    if config is None:
        with io.open(config_file_path, encoding="utf-8") as fh:
            config = json.load(fh)
    if not isinstance(config, dict):
        config = config.to_dict()
    names = list(config.get("architectures") or [])
    return names + ([config["init_class"]] if config.get("init_class") else [])


def register() -> None:
    """Idempotent: register PanGuConfig, PanGuForCausalLM / PanGuModel and PanGuTokenizer."""
    global _registered
    if _registered:
        return
    from paddlenlp.transformers import AutoConfig, AutoTokenizer
    from paddlenlp.transformers.auto.modeling import _BaseAutoModelClass

    from ..config import PanGuConfig
    from ..tokenizer.tokenization import PanGuTokenizer
    from .modeling import PanGuForCausalLM, PanGuModel

    AutoConfig.register(PanGuConfig.model_type, PanGuConfig, exist_ok=True)
    AutoTokenizer.register(PanGuConfig, slow_tokenizer_class=PanGuTokenizer, exist_ok=True)
    classes = {c.__name__: c for c in (PanGuForCausalLM, PanGuModel)}
    original = _BaseAutoModelClass._get_model_class_from_config.__func__

    def get_model_class(cls, pretrained_model_name_or_path, config_file_path, config=None):
        for name in _architectures(config_file_path, config):
            if name in classes:
                return classes[name]
        return original(cls, pretrained_model_name_or_path, config_file_path, config)

    _BaseAutoModelClass._get_model_class_from_config = classmethod(get_model_class)
    _registered = True
