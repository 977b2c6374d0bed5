"""Every speed-up keeps the reference math: logits and gradients within fp32 rounding of the reference ops.

Tolerances come from the standard fp32 error bound (Higham): a dot product of length K computed in
another order differs by at most gamma_K * sum|a_i||b_i| with gamma_K ~ K * u, u = 2^-24. A fast path
only reorders the roundings inside an op, so a whole forward differs by at most (number of GEMMs on the
path) * K * u relative to the output's scale (the pre-LN blocks at init do not amplify), K = max(H, F);
the backward runs two GEMMs per forward one, hence twice that for gradients.
"""
import math

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_pangu.config import get_preset
from paddle_pangu.model import PanGuForCausalLM
from paddle_pangu.model import layers as L
from paddle_pangu.model import ops

U = 2.0 ** -24


def _model(seed=0):
    cfg = get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    paddle.seed(seed)
    model = PanGuForCausalLM(cfg)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():  # biases start at zero: make them count
        if name.endswith(".bias"):
            p.set_value(rng.normal(0, 0.05, p.shape).astype("float32"))
    return model, cfg


def _bound(cfg, backward=False) -> float:
    gemms = 6 * cfg.num_layers + 1  # q, k, v, QK^T, PV, out, fc_in, fc_out ~ 6 dense-sized per layer, + head
    return (2 if backward else 1) * gemms * max(cfg.hidden_size, cfg.ffn_hidden_size) * U


def _run(model, ids, fast):
    previous = ops.set_fast_paths(fast)
    try:
        loss, logits = model(ids, labels=ids)
        loss.backward()
        grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
        model.clear_gradients()
        return logits.numpy(), grads
    finally:
        ops.set_fast_paths(previous)


def test_training_forward_and_backward_match_the_reference_ops():
    model, cfg = _model()
    ids = paddle.to_tensor(np.random.default_rng(1).integers(10, cfg.vocab_size, [2, 12]), dtype="int64")
    ref_logits, ref_grads = _run(model, ids, fast=False)
    fast_logits, fast_grads = _run(model, ids, fast=True)
    tol = _bound(cfg) * np.abs(ref_logits).max()
    assert np.abs(fast_logits - ref_logits).max() <= tol
    gtol = _bound(cfg, backward=True)
    for name, g in ref_grads.items():
        # scale: the largest gradient of the same sublayer. Some gradients are zero in exact arithmetic
        # (the key bias: softmax ignores a per-row shift of the scores) and hold only that scale's rounding.
        group = name.rsplit(".", 2)[0]
        scale = max(np.abs(v).max() for n, v in ref_grads.items() if n.startswith(group + "."))
        assert np.abs(fast_grads[name] - g).max() <= gtol * scale, name


def test_the_fast_path_is_really_taken():
    model, cfg = _model()
    block = model.pangu.layers[0]
    x = paddle.randn([2, 5, cfg.hidden_size])
    calls = []
    original = paddle.addmm

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    paddle.addmm = spy
    try:
        with paddle.no_grad():  # inference: addmm; training goes through the fused CPU kernel (below)
            block.mlp(x)
            previous = ops.set_fast_paths(False)
            block.mlp(x)
            ops.set_fast_paths(previous)
    finally:
        paddle.addmm = original
    assert len(calls) == 2  # fc_in and fc_out with fast paths on; none with them off

    from paddle_pangu import kernels

    kernel_calls = []
    real = kernels.linear
    kernels.linear = lambda *a: kernel_calls.append(1) or real(*a)
    try:
        block.mlp(x)
    finally:
        kernels.linear = real
    assert len(kernel_calls) == 2


def test_dense_equals_linear_in_value_and_gradients():
    paddle.seed(3)
    layer = paddle.nn.Linear(32, 48)
    layer.bias.set_value(paddle.randn([48]))
    x = paddle.randn([3, 7, 32])
    x.stop_gradient = False
    outs = []
    for fn in (lambda: F.linear(x, layer.weight, layer.bias), lambda: ops.linear(layer, x)):
        y = fn()
        (y * paddle.arange(48, dtype="float32")).sum().backward()
        outs.append((y.numpy(), x.grad.numpy().copy(), layer.weight.grad.numpy().copy(), layer.bias.grad.numpy().copy()))
        x.clear_gradient()
        layer.clear_gradients()
    bound = 32 * U * (np.abs(x.numpy()).reshape(-1, 32) @ np.abs(layer.weight.numpy())).max() + 48 * U
    assert outs[1][0].shape == (3, 7, 48) and np.abs(outs[1][0] - outs[0][0]).max() <= bound
    np.testing.assert_array_equal(outs[1][3], outs[0][3])  # bias grad: the same column sums
    for a, b in zip(outs[0][1:3], outs[1][1:3]):
        assert np.abs(a - b).max() <= 21 * U * np.abs(a).max()  # K = B*S = 21 rows in the weight grad


def test_query_scaling_is_exact_for_a_power_of_two_head_dim():
    model, cfg = _model()
    attn = model.pangu.layers[0].attention
    assert attn.head_dim & (attn.head_dim - 1) == 0
    q, k, v = (paddle.randn([2, attn.num_heads, 6, attn.head_dim]) for _ in range(3))
    mask = paddle.triu(paddle.full([6, 6], L.MASK_VALUE), 1).reshape([1, 1, 6, 6])
    assert ops.scale_on_q(attn.impl, q.dtype, attn.head_dim)  # forward scales q (on the dense projection)

    def plain(q, q_scaled):
        return ops.attention(q, k, v, mask, head_dim=attn.head_dim, dropout=attn.attn_dropout, training=attn.training,
                             parallel=attn.parallel, q_scaled=q_scaled).numpy()

    ref = plain(q, False)
    fast = plain(q * (1.0 / math.sqrt(attn.head_dim)), True)
    np.testing.assert_array_equal(fast, ref)  # x * 2^-n commutes with fp32 rounding
    assert math.log2(attn.head_dim).is_integer()


def test_head_on_the_last_position_only_equals_the_full_logits_there():
    model, cfg = _model()
    model.eval()
    ids = paddle.to_tensor(np.random.default_rng(2).integers(10, cfg.vocab_size, [3, 9]), dtype="int64")
    with paddle.no_grad():
        full, cache_full = model(ids, use_cache=True)
        last, cache_last = model(ids, use_cache=True, logits_to_keep=1)
        hidden = model.pangu(ids)
    assert last.shape == [3, 1, cfg.vocab_size]
    w = model.pangu.embeddings.word_embeddings.weight.numpy()
    bound = cfg.hidden_size * U * (np.abs(hidden.numpy()[:, -1]) @ np.abs(w).T)  # per element
    assert (np.abs(last.numpy()[:, 0] - full.numpy()[:, -1]) <= bound).all()
    for (k1, v1), (k2, v2) in zip(cache_full, cache_last):
        np.testing.assert_array_equal(k1.numpy(), k2.numpy())
        np.testing.assert_array_equal(v1.numpy(), v2.numpy())


def test_inference_head_copy_equals_the_tied_head_and_is_refused_in_training():
    from paddle_pangu.inference.generation import DygraphStepper

    model, cfg = _model(3)
    stepper = DygraphStepper(model, frozen=True)
    w = model.pangu.embeddings.word_embeddings.weight
    np.testing.assert_array_equal(stepper.head_t.numpy(), w.numpy().T)  # a copy in the [H, V] layout
    assert DygraphStepper(model).head_t is None  # a one-off generate reads the embedding itself
    rng = np.random.default_rng(4)
    ids = rng.integers(10, cfg.vocab_size, [2, 7])
    mask, pos = np.ones_like(ids), np.tile(np.arange(7), [2, 1])
    with paddle.no_grad():
        hidden = model.pangu(paddle.to_tensor(ids)).numpy()
    plain_logits, plain_cache = DygraphStepper(model)(ids, pos, mask, None)
    fast_logits, fast_cache = stepper(ids, pos, mask, None)
    bound = cfg.hidden_size * U * (np.abs(hidden[:, -1]) @ np.abs(w.numpy()).T)  # one length-H dot per logit
    assert (np.abs(fast_logits - plain_logits) <= bound).all()
    for (k1, v1), (k2, v2) in zip(plain_cache, fast_cache):
        np.testing.assert_array_equal(k1.numpy(), k2.numpy())  # the blocks are untouched
    nxt, step_pos, step_mask = rng.integers(10, cfg.vocab_size, [2, 1]), pos[:, -1:] + 1, np.ones([2, 8], "int64")
    a, _ = DygraphStepper(model)(nxt, step_pos, step_mask, plain_cache)  # a decode step over the cache
    b, _ = stepper(nxt, step_pos, step_mask, fast_cache)
    with paddle.no_grad():
        h, _ = model.pangu(paddle.to_tensor(nxt), paddle.to_tensor(step_pos), paddle.to_tensor(step_mask),
                           plain_cache, True)
    assert (np.abs(a - b) <= cfg.hidden_size * U * (np.abs(h.numpy()[:, -1]) @ np.abs(w.numpy()).T)).all()
    stepper.head_t = paddle.zeros_like(stepper.head_t)
    assert not stepper(ids, pos, mask, None)[0].any()  # the copy is what the head reads
    with pytest.raises(ValueError, match="head_weight_t"):
        model(paddle.to_tensor(ids), labels=paddle.to_tensor(ids), head_weight_t=stepper.head_t)


def test_dropout_is_no_op_at_inference_and_nn_dropout_in_training():
    x = paddle.randn([4, 64])
    ours, ref = L.Dropout(0.5), paddle.nn.Dropout(0.5)
    ours.eval()
    assert ours(x) is x  # no op at all, not merely equal values
    ours.train()
    paddle.seed(5)
    a = ours(x).numpy()
    paddle.seed(5)
    np.testing.assert_array_equal(a, ref(x).numpy())  # the same mask from the same RNG
    assert (a == 0).any() and (a != 0).any()
    dropouts = [m for m in _model()[0].sublayers() if isinstance(m, paddle.nn.Dropout)]
    assert dropouts and all(isinstance(m, L.Dropout) for m in dropouts)  # the model uses it everywhere
