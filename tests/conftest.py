"""Shared fixtures: tiny deterministic models."""
import os

import pytest

os.environ.setdefault("FLAGS_call_stack_level", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "distributed: launches several CPU processes with paddle.distributed.launch")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core machine")


@pytest.fixture
def tiny_config():
    from paddle_pangu.config import get_preset

    return get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def tiny_model(tiny_config):
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(1234)
    model = PanGuForCausalLM(tiny_config)
    model.eval()
    return model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny model directory with its tokenizer (dropout off, so fine-tuning runs are deterministic)."""
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.tokenizer import PanGuTokenizer

    out = tmp_path_factory.mktemp("base")
    paddle.seed(7)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.save_pretrained(str(out), safe_serialization=True)
    PanGuTokenizer.from_default().save_pretrained(str(out))
    return str(out)
