"""Tensor / pipeline parallel parity against one process (real multi-process CPU runs).

Same plain weights (split with the weight table), same batch:
  * mp2:   loss, every gradient (merged over mp ranks) and the gathered
           full-vocabulary logits match one process;
  * pp2:   one `train_batch` with 2 micro-batches: loss and the SGD-updated
           weights (global-norm clipped, gathered back to plain names) match
           one process;
  * mp2pp2 (4 processes): as pp2.
"""
import os
import sys

import numpy as np
import paddle
import pytest

from paddle_pangu.model import PanGuForCausalLM
from paddle_pangu.model import weight_tables as wt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from launch_utils import launch  # noqa: E402
from parallel_worker import LR, make_batch, tiny_parallel_model_config  # noqa: E402

WORKER = os.path.join(HERE, "parallel_worker.py")
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single-process model: plain weights, batch, loss and gradients; the .npz the workers read."""
    cfg = tiny_parallel_model_config()
    paddle.seed(2024)
    model = PanGuForCausalLM(cfg)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    batch = make_batch(cfg)
    loss = model(paddle.to_tensor(batch["input_ids"]), labels=paddle.to_tensor(batch["labels"]),
                 loss_mask=paddle.to_tensor(batch["loss_mask"]))[0]
    loss.backward()
    grads = {k: p.grad.numpy() for k, p in model.named_parameters()}
    with paddle.no_grad():
        logits = model(paddle.to_tensor(batch["input_ids"])).numpy()
    path = tmp_path_factory.mktemp("mp_pp") / "inputs.npz"
    np.savez(path, **weights, **batch)
    return {"cfg": cfg, "weights": weights, "loss": float(loss), "grads": grads, "logits": logits,
            "path": str(path)}


def _assert_close(actual: dict, expected: dict, what: str, rtol=1e-4, atol=1e-6):
    assert sorted(actual) == sorted(expected), f"{what}: parameter names differ"
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=f"{what}: {name}")


def _clip_args(reference):
    """Clip at half the single-process global grad norm, so clipping is active and scales by 0.5.

    A pipeline that counted the tied embedding on both stages (or missed a
    stage) would compute another norm and another update.
    """
    norm = float(np.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in reference["grads"].values())))
    return ["--clip", repr(norm / 2)]


def _check_sgd_step(outs, reference):
    """Every rank's gathered weights equal w - LR * 0.5 * grad (clipped SGD of the single-process run)."""
    expected = {k: w - LR * 0.5 * reference["grads"][k] for k, w in reference["weights"].items()}
    for out in outs:
        assert out["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        _assert_close(out["weights_after"], expected, f"rank mp{out['mp_rank']} pp{out['pp_rank']}")
    for out in outs:
        assert len(out["names"]) == len(set(out["names"])), "two pipeline parameters map to one plain name"
    stage_names = {o["pp_rank"]: set(o["names"]) for o in outs}
    assert set.union(*stage_names.values()) == set(reference["weights"])  # pipe name map covers every parameter
    assert "pangu.embeddings.word_embeddings.weight" in stage_names[0] & stage_names[max(stage_names)]  # tied


def test_mp2_forward_backward_matches_single_process(reference):
    outs = launch(WORKER, nproc=2, args=["--mp", "2", "--data", reference["path"]], timeout=300).outputs()
    assert all(o["cpu_backend"] for o in outs)
    for out in outs:
        assert out["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        np.testing.assert_allclose(out["logits"], reference["logits"], rtol=1e-4, atol=1e-5)
    shards = [o["grads"] for o in sorted(outs, key=lambda o: o["mp_rank"])]
    assert shards[0]["pangu.layers.0.attention.q_proj.weight"].shape[1] == reference["cfg"].hidden_size // 2
    _assert_close(wt.merge_state_dicts(shards), reference["grads"], "mp2 grads")


def test_pp2_train_batch_matches_single_process(reference):
    args = ["--pp", "2", "--data", reference["path"], *_clip_args(reference)]
    outs = launch(WORKER, nproc=2, args=args, timeout=300).outputs()
    assert sorted(o["pp_rank"] for o in outs) == [0, 1]
    _check_sgd_step(outs, reference)


def test_mp2_pp2_train_batch_matches_single_process(reference):
    args = ["--mp", "2", "--pp", "2", "--recompute", "1", "--data", reference["path"], *_clip_args(reference)]
    outs = launch(WORKER, nproc=4, args=args, timeout=420).outputs()
    assert sorted((o["pp_rank"], o["mp_rank"]) for o in outs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _check_sgd_step(outs, reference)
