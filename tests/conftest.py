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
