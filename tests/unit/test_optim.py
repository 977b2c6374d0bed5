"""AdamW groups, the warmup + cosine schedule and the grad-norm recorder."""
import math

import numpy as np
import paddle
import pytest

from paddle_pangu.training.optim import (
    RecordingClipGrad, WarmupCosineDecay, attach_norm_recorder, build_optimizer, build_scheduler, is_decayed,
)
from paddle_pangu.training.run_config import OptimSection


def test_schedule_warmup_cosine_floor():
    s = WarmupCosineDecay(max_lr=1e-3, min_lr=1e-5, warmup_steps=10, decay_steps=110)
    lrs = [s.lr_at(i) for i in range(130)]
    assert lrs[0] == pytest.approx(1e-4)  # linear warmup: (0+1)/10 of the peak
    assert lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[110] == pytest.approx(1e-5) and lrs[129] == pytest.approx(1e-5)


def test_schedule_steps_and_state_roundtrip():
    s = WarmupCosineDecay(1.0, 0.0, 2, 10, decay_style="linear")
    seen = []
    for _ in range(5):
        seen.append(s.get_lr())
        s.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75])
    t = WarmupCosineDecay(1.0, 0.0, 2, 10, decay_style="linear")
    t.set_state_dict(s.state_dict())
    assert t.get_lr() == pytest.approx(s.get_lr()) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="decay_style"):
        WarmupCosineDecay(1.0, 0.0, 2, 10, decay_style="step")


def test_no_decay_on_layernorm_and_bias(tiny_model):
    decayed = [n for n, p in tiny_model.named_parameters() if is_decayed(p)]
    assert "pangu.embeddings.word_embeddings.weight" in decayed
    assert "pangu.layers.0.mlp.fc_in.weight" in decayed
    assert "pangu.query_layer.top_query_embedding.weight" in decayed
    assert not any(n.endswith(".bias") or "layernorm" in n for n in decayed)
    assert "pangu.final_layernorm.weight" not in decayed


def test_adamw_hyperparameters_and_decay_selection(tiny_model):
    cfg = OptimSection(lr=0.0, min_lr=0.0, warmup_steps=0, weight_decay=0.1)
    sched = build_scheduler(cfg, max_steps=10)
    opt = build_optimizer(tiny_model, cfg, sched)
    assert (opt._beta1, opt._beta2, opt._epsilon) == (0.9, 0.95, 1e-8)  # REF recipe
    fn = opt._apply_decay_param_fun
    params = dict(tiny_model.named_parameters())
    assert fn(params["pangu.layers.0.attention.q_proj.weight"].name)
    assert not fn(params["pangu.layers.0.attention.q_proj.bias"].name)
    assert not fn(params["pangu.layers.0.input_layernorm.weight"].name)


def test_recorded_grad_norm_matches_numpy_and_clips():
    """The recorder gives the pre-clip norm, and the optimizer really stepped on clip/‖g‖ · g.

    AdamW's first update is lr·sign(g) whether or not g was clipped, so the
    weights cannot show the clip; the first moment can: after one step it is
    exactly (1 - β1) · g · clip / ‖g‖ (and (1 - β1) · g without clipping).
    The weights are checked against the by-hand first step too.
    """
    paddle.seed(0)
    layer = paddle.nn.Linear(4, 3)
    cfg = OptimSection(lr=0.1, warmup_steps=0, grad_clip=0.5, weight_decay=0.1)
    opt = build_optimizer(layer, cfg, build_scheduler(cfg, 10))
    assert isinstance(opt._grad_clip, RecordingClipGrad)
    norm = attach_norm_recorder(opt)
    assert norm() is None
    (layer(paddle.ones([2, 4])) * 10).sum().backward()
    grads = [p.grad.numpy().astype(np.float64) for p in layer.parameters()]
    before = [p.numpy().astype(np.float64) for p in layer.parameters()]
    opt.step()
    expected = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    assert expected > cfg.grad_clip  # the clip is active: scale 0.5 / ‖g‖
    assert norm() == pytest.approx(expected, rel=1e-6)
    scale = cfg.grad_clip / expected
    state = opt.state_dict()
    for p, g, w0 in zip(layer.parameters(), grads, before):
        moment1 = state[f"{p.name}_moment1_0"].numpy()
        np.testing.assert_allclose(moment1, (1 - cfg.beta1) * g * scale, rtol=1e-6)
        clipped = g * scale
        decay = cfg.weight_decay if is_decayed(p) else 0.0
        by_hand = w0 * (1 - cfg.lr * decay) - cfg.lr * clipped / (np.abs(clipped) + cfg.eps)
        np.testing.assert_allclose(p.numpy(), by_hand, rtol=0, atol=1e-6)


@pytest.mark.parametrize("limit", [0.05, 1e6])  # clipping active / inactive
def test_recording_clip_fast_path_gives_paddles_clip_bits(limit):
    """The CPU fp32 route (norm once, scale_ only above the limit) against paddle's ClipGradByGlobalNorm:
    identical gradients and norm, bit for bit; a bf16 gradient takes paddle's own route."""
    rng = np.random.default_rng(3)
    shapes = [[300, 64], [64], [7, 5, 3]]
    params = [paddle.create_parameter(s, "float32") for s in shapes]
    grads = [rng.standard_normal(s).astype("float32") * 10.0 ** -i for i, s in enumerate(shapes)]
    ours, ref = RecordingClipGrad(limit), paddle.nn.ClipGradByGlobalNorm(limit)
    assert ours._fast_path([paddle.to_tensor(g) for g in grads])
    got = ours([(p, paddle.to_tensor(g)) for p, g in zip(params, grads)])
    want = ref([(p, paddle.to_tensor(g)) for p, g in zip(params, grads)])
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    norm64 = np.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
    assert abs(float(ours.last_norm) - norm64) <= 1e-6 * norm64
    assert (limit < norm64) == any(not np.array_equal(a.numpy(), g) for (_, a), g in zip(got, grads))
    assert not ours._fast_path([paddle.to_tensor(grads[0]).astype("bfloat16")])
