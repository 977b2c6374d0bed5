"""Paddle Inference export: the real predictor reproduces dygraph generation."""
import numpy as np
import paddle
import pytest

from paddle_pangu.inference import SamplingConfig, generate
from paddle_pangu.inference.export import InferenceStepper, export_model, generate_with_predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(21)
    model = PanGuForCausalLM(get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    out = tmp_path_factory.mktemp("export")
    export_model(model, str(out))
    return model, str(out)


def test_export_writes_both_graphs(exported):
    _, out = exported
    import os

    for name in ("prefill", "decode"):
        assert os.path.getsize(os.path.join(out, name + ".pdiparams")) > 0
        assert os.path.exists(os.path.join(out, name + ".json"))
    assert os.path.exists(os.path.join(out, "config.json"))


def test_predictor_logits_match_dygraph(exported):
    model, out = exported
    stepper = InferenceStepper(out)
    ids = np.array([[6, 6, 101, 202, 303], [11, 12, 13, 14, 15]], "int64")
    mask = (ids != 6).astype("int64")
    mask[1, :] = 1
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, kv = stepper(ids, pos, mask, None)
    ref, cache = model(paddle.to_tensor(ids), position_ids=paddle.to_tensor(pos), attention_mask=paddle.to_tensor(mask),
                       use_cache=True)
    np.testing.assert_allclose(logits, ref[:, -1].numpy(), rtol=1e-5, atol=1e-5)
    assert kv.shape == (model.config.num_layers, 2, 2, model.config.num_attention_heads, 5, model.config.head_dim)
    np.testing.assert_allclose(kv[-1, 0], cache[-1][0].numpy(), rtol=1e-5, atol=1e-6)


def test_predictor_generation_equals_dygraph(exported):
    model, out = exported
    prompts = [[101, 2002, 303, 4004], [77, 88]]
    cfg = SamplingConfig(max_new_tokens=6, eos_token_id=-1)
    assert generate_with_predictor(out, prompts, cfg) == generate(model, prompts, cfg)


def test_missing_export_dir_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="prefill"):
        InferenceStepper(str(tmp_path))
