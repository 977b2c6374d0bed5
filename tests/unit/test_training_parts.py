"""Training pieces in one process: AMP plan, data order, checkpoint resume, final model export."""
import json
import os
import warnings

import numpy as np
import paddle
import pytest

from paddle_pangu.training.amp import AmpConfigError, cpu_bf16_autocast_works, plan_amp
from paddle_pangu.training.batches import StepBatcher, SyntheticTokens
from paddle_pangu.training.run_config import AmpSection, run_config_from_dict


@pytest.mark.parametrize("dtype,level,device,message", [
    ("float16", "O2", "cpu", "needs a GPU or NPU"),
    ("bfloat16", "O2", "cpu", "only bfloat16 O1"),
])
def test_amp_modes_rejected_on_cpu(dtype, level, device, message):
    with pytest.raises(AmpConfigError, match=message):
        plan_amp(AmpSection(dtype=dtype, level=level), device)


def test_amp_plans():
    assert not plan_amp(AmpSection(dtype="float32"), "cpu").enabled
    fp16 = plan_amp(AmpSection(dtype="float16", level="O2"), "npu")
    assert fp16.use_loss_scaling and fp16.master_weights and fp16.make_scaler() is not None
    bf16 = plan_amp(AmpSection(dtype="bfloat16", level="O2"), "gpu")
    assert bf16.enabled and not bf16.use_loss_scaling and bf16.make_scaler() is None and bf16.master_weights


def test_cpu_bf16_accepted_only_if_autocast_really_casts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with paddle.amp.auto_cast(enable=True, level="O1", dtype="bfloat16"):
            casts = paddle.matmul(paddle.ones([2, 4]), paddle.ones([4, 3])).dtype == paddle.bfloat16
    assert cpu_bf16_autocast_works() == casts
    if casts:
        assert plan_amp(AmpSection(dtype="bfloat16", level="O1"), "cpu").enabled
    else:
        with pytest.raises(AmpConfigError, match="does not autocast on a CPU place"):
            plan_amp(AmpSection(dtype="bfloat16", level="O1"), "cpu")


def test_data_order_is_a_function_of_step_and_rank():
    ds = SyntheticTokens(num_samples=10, seq_len=8, vocab_size=100, seed=3, eod_every=4)
    assert ds[5].shape == (9,) and (ds[5] == ds[5]).all() and ds[5][3] == 9
    assert ds[5].min() >= 9 and not np.array_equal(ds[5], ds[6])
    single = StepBatcher(ds, per_rank=4, data_rank=0, data_world=1, seed=1)
    ranks = [StepBatcher(ds, per_rank=2, data_rank=r, data_world=2, seed=1) for r in range(2)]
    for step in range(6):  # crosses epochs (10 samples, 4 per step)
        together = np.concatenate([b.batch(step) for b in ranks])
        np.testing.assert_array_equal(together, single.batch(step))
    fresh = StepBatcher(ds, per_rank=4, data_rank=0, data_world=1, seed=1)
    np.testing.assert_array_equal(fresh.batch(4), single.batch(4))  # no hidden state
    epoch0 = sorted(i for s in (0, 1) for i in single.indices(s)) + single.indices(2)[:2]
    assert sorted(single._dataset_index(i) for i in epoch0) == list(range(10))  # a permutation per epoch


def _config(out_dir, **train):
    return run_config_from_dict({
        "model": {"preset": "tiny", "overrides": {"num_layers": 3, "max_position_embeddings": 16}},
        "data": {"seq_len": 16, "synthetic": {"num_samples": 32, "vocab_size": 500}},
        "optim": {"lr": 3.0e-3, "warmup_steps": 1},
        "parallel": {"micro_batch_size": 2, "accumulate_steps": 2},
        "train": {"max_steps": 4, "seed": 5, "output_dir": str(out_dir), "eval_iters": 1, **train},
        "checkpoint": {"save_interval": 2, "keep_last": 1},
        "logging": {"log_interval": 1, "progress_bar": False, "visualdl": True},
    }, source="test")


def _losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"train"' in line]


def test_single_process_resume_and_final_model(tmp_path):
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.training.evaluate import evaluate_model_dir
    from paddle_pangu.training.trainer import Trainer

    straight, resumed = tmp_path / "a", tmp_path / "b"
    result = Trainer(_config(straight)).train()  # dropout 0.1 (preset default): RNG state matters
    Trainer(_config(resumed)).train(stop_after=3)
    assert [m["step"] for m in _losses(resumed)] == [1, 2, 3]
    assert sorted(os.listdir(resumed / "checkpoints")) == ["latest", "step_00000003"]  # keep_last 1
    Trainer(_config(resumed)).train()
    a, b = _losses(straight), _losses(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in b], [m["loss"] for m in a], rtol=1e-6)
    assert os.listdir(straight / "visualdl")  # VisualDL event files were written

    model = PanGuForCausalLM.from_pretrained(result["model_dir"])  # consolidated dir loads on its own
    assert model.config.num_layers == 3
    again = evaluate_model_dir(result["model_dir"], _config(straight))
    assert again["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-5)
