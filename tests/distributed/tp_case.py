"""The model of the tensor-parallel inference tests (tests/distributed/test_tensor_parallel_inference.py and
its one-process companion tests/unit/test_tp_inference_parts.py)."""
from __future__ import annotations

from pathlib import Path

PROMPTS = ["北京是中国的", "你好，今天天气"]


def tp_model(root: Path) -> tuple[str, str]:
    """(full directory, mp2 per-rank directory) of the test model."""
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.convert.reshard import reshard
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    full, ranks = root / "full", root / "mp2"
    paddle.seed(11)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                        initializer_range=0.1))
    model.save_pretrained(str(full), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(full))
    reshard(str(full), str(ranks), mp=2, pp=1)
    return str(full), str(ranks)
