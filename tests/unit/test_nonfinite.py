"""Non-finite policy in the real Trainer: a planted NaN batch is skipped, a diverging LR stops the run.

Also: evaluation reports NaN for a NaN model (Paddle's CPU cross_entropy says ln V).
"""
import json
import math
import os

import numpy as np
import paddle
import pytest

from paddle_pangu.training import checkpoint as ckpt
from paddle_pangu.training.nonfinite import NonFiniteError, grads_finite
from paddle_pangu.training.run_config import run_config_from_dict


def _config(out_dir, lr=3e-3, max_steps=5, max_bad=2, grad_clip=1.0):
    return run_config_from_dict({
        "model": {"preset": "tiny", "overrides": {"num_layers": 2, "max_position_embeddings": 16,
                                                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        "data": {"seq_len": 16, "synthetic": {"num_samples": 32, "vocab_size": 500}},
        "optim": {"lr": lr, "warmup_steps": 0, "grad_clip": grad_clip, "decay_style": "constant"},
        "parallel": {"micro_batch_size": 2, "accumulate_steps": 1},
        "train": {"max_steps": max_steps, "seed": 5, "output_dir": str(out_dir), "eval_iters": 1,
                  "max_nonfinite_steps": max_bad},
        "checkpoint": {"save_interval": 1, "keep_last": 2, "save_final_model": False},
        "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
    }, source="test")


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _plant_nan_at(trainer, bad_steps):
    """NaN activations for the batches of the given 1-based steps (as a corrupt batch would give)."""
    def hook(layer, inputs, output):
        return output * float("nan") if trainer.step + 1 in bad_steps and layer.training else output

    trainer.model.pangu.embeddings.register_forward_post_hook(hook)


def _weights(trainer):
    return {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}


def test_planted_nan_batch_is_skipped_and_training_goes_on(tmp_path):
    from paddle_pangu.training.trainer import Trainer

    ref = Trainer(_config(tmp_path / "ref", max_steps=2))
    ref.train(stop_after=2)
    trainer = Trainer(_config(tmp_path / "run"))
    _plant_nan_at(trainer, {3})
    trainer.train(stop_after=3)
    # step 3's update was skipped: the weights after step 3 are those after step 2 of the same run
    for name, value in _weights(trainer).items():
        np.testing.assert_array_equal(value, _weights(ref)[name], err_msg=name)
    trainer.train()  # steps 4, 5 train normally again
    rows = [m for m in _metrics(tmp_path / "run") if m["type"] == "train"]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5]
    # the loss is NaN too: the fused CPU cross entropy (paddle_pangu/kernels) does not turn NaN logits
    # into ln V as Paddle's CPU kernel does, so the divergence shows in the logged loss as well
    assert rows[2]["nonfinite"] == "loss and gradient" and rows[2]["grad_norm"] is None
    assert rows[2]["loss"] is None or not math.isfinite(rows[2]["loss"])
    assert all("nonfinite" not in m and math.isfinite(m["grad_norm"]) for m in rows[3:])
    assert all(np.isfinite(v).all() for v in _weights(trainer).values())


def test_diverging_lr_stops_with_a_finite_checkpoint_and_says_why(tmp_path):
    from paddle_pangu.training.trainer import Trainer

    out = tmp_path / "run"
    trainer = Trainer(_config(out, lr=1e30, max_steps=20, max_bad=2, grad_clip=0.0))
    with pytest.raises(NonFiniteError) as err:
        trainer.train()
    msg = str(err.value)
    assert "\n" not in msg and "3 consecutive non-finite steps" in msg and "train.max_nonfinite_steps=2" in msg
    assert "non-finite gradient" in msg or "non-finite loss" in msg
    assert "samples" in msg and "dataset rows" in msg
    stop_step = trainer.step
    assert f"step {stop_step} " in msg
    step_dir = ckpt.find_resume_dir(str(out), "auto")
    assert step_dir.endswith(ckpt.step_dir_name(stop_step)) and "saved as" in msg
    from safetensors.numpy import load_file

    weights = load_file(os.path.join(step_dir, "rank_00000", "model.safetensors"))
    assert weights and all(np.isfinite(v).all() for v in weights.values())
    rows = [m for m in _metrics(out) if m["type"] == "train"]
    assert [m.get("nonfinite") is not None for m in rows[-3:]] == [True, True, True]


def test_grads_finite_sees_one_nan_or_opposite_infs():
    a, b = paddle.create_parameter([3], "float32"), paddle.create_parameter([2, 2], "float32")
    for ga, gb, ok in [([1.0, 2, 3], [[1.0, 1], [1, 1]], True), ([1.0, float("nan"), 3], [[0.0, 0], [0, 0]], False),
                       ([float("inf"), 0, 0], [[-float("inf"), 0], [0, 0]], False)]:
        (a * paddle.to_tensor(ga)).sum().backward()
        (b * paddle.to_tensor(gb)).sum().backward()
        assert grads_finite([a, b]) is ok
        a.clear_gradient()
        b.clear_gradient()


def test_evaluation_reports_nan_for_a_nan_model(tmp_path):
    from paddle_pangu.model.losses import token_losses
    from paddle_pangu.training.trainer import Trainer

    trainer = Trainer(_config(tmp_path / "run", max_steps=1))
    for p in trainer.model.parameters():
        p.set_value(paddle.full_like(p, float("nan")))
    loss, logits = trainer.model(paddle.to_tensor([[10, 11, 12]]), labels=paddle.to_tensor([[11, 12, 13]]))[:2]
    assert abs(float(loss) - math.log(trainer.model_config.vocab_size)) < 1e-3 or math.isnan(float(loss))  # CPU quirk
    result = trainer.evaluate()
    assert math.isnan(result["loss"]) and math.isnan(result["ppl"])
    assert np.isnan(token_losses(trainer.model, [[10, 11, 12]])[0]).all()
    assert np.isnan(token_losses(trainer.model, [[10, 11, 12]], starts=[2])[0]).all()  # head on scored positions only
