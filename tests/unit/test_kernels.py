"""The fused CPU kernels (paddle_pangu/kernels) against float64 references, with bounds derived from fp32
rounding (u = 2^-24 per operation, gamma(n) = n u / (1 - n u) for an n-term sum), and the switches
that decide where they run.

The AVX2 exp (Cephes expf polynomial) is bounded by E_EXP = 16 u relative: the polynomial's own error
(below 2^-23) plus about ten rounded operations; results below the smallest normal, TINY = 2^-126,
flush to 0 (an absolute error of at most TINY).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_pangu import kernels

U = 2.0 ** -24
E_EXP = 16 * U
TINY = 2.0 ** -126


def gamma(n):
    return n * U / (1 - n * U)


@pytest.fixture(scope="module")
def ops():
    module = kernels.load()
    assert module is not None, f"the CPU kernels did not build: {kernels.reason()}"
    return module


def _t(a, grad=False):
    t = paddle.to_tensor(np.ascontiguousarray(a, dtype="float32"))
    t.stop_gradient = not grad
    return t


# ------------------------------------------------------------------------------------------ layernorm
def _ln_ref(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    return d * rstd, rstd, mu


def test_layer_norm_forward_and_backward_within_fp32_bounds(ops):
    rng = np.random.default_rng(0)
    n, h, eps = 96, 512, 1e-5
    x = (rng.standard_normal([2, n // 2, h]) * 3 + 1.5).astype("float32")
    w = (rng.standard_normal(h) + 1).astype("float32")
    b = rng.standard_normal(h).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")
    xt, wt, bt = _t(x, True), _t(w, True), _t(b, True)
    y = kernels.layer_norm(xt, wt, bt, eps)
    assert y is not None and y.shape == list(x.shape)
    gx, gw, gb = paddle.grad([y], [xt, wt, bt], [_t(dy)])

    X, W, B, DY = (a.astype("float64") for a in (x, w, b, dy))
    xh, rstd, mu = _ln_ref(X, W, B, eps)
    # forward: |d mu| <= gamma(h) mean|x|; the centred value and the variance inherit it (var: Cauchy-Schwarz
    # mean|d| <= sqrt(var)), rstd adds gamma(h+2) of the variance and 3 roundings; y adds 3 roundings
    dmu = gamma(h) * np.abs(X).mean(-1, keepdims=True)
    var = 1 / rstd ** 2 - eps
    dvar = gamma(h + 2) * var + 2 * np.sqrt(var) * dmu + dmu ** 2
    rel_rstd = dvar / (2 * (var + eps)) + 3 * U
    dxh = rstd * (dmu + U * np.abs(X - mu)) + np.abs(xh) * rel_rstd
    bound_y = np.abs(W) * dxh + 3 * U * (np.abs(xh * W) + np.abs(B))
    assert (np.abs(y.numpy() - (xh * W + B)) <= bound_y).all()

    g = DY * W
    a, c = g.mean(-1, keepdims=True), (g * xh).mean(-1, keepdims=True)
    ref_dx = rstd * (g - a - xh * c)
    # dx = rstd (g - a - xh c): a and c are h-term means; xh carries dxh; 4 roundings more
    da = gamma(h) * np.abs(g).mean(-1, keepdims=True)
    dc = gamma(h) * np.abs(g * xh).mean(-1, keepdims=True) + (np.abs(g) * dxh).mean(-1, keepdims=True)
    bound_dx = rstd * (U * np.abs(g) + da + np.abs(xh) * dc + np.abs(c) * dxh) + np.abs(ref_dx) * (rel_rstd + 4 * U)
    assert (np.abs(gx.numpy() - ref_dx) <= bound_dx).all()
    rows = n
    ref_dw, ref_db = (DY * xh).reshape(-1, h).sum(0), DY.reshape(-1, h).sum(0)
    bound_dw = gamma(rows + 1) * np.abs(DY * xh).reshape(-1, h).sum(0) + (np.abs(DY) * dxh).reshape(-1, h).sum(0)
    assert (np.abs(gw.numpy() - ref_dw) <= bound_dw).all()
    assert (np.abs(gb.numpy() - ref_db) <= gamma(rows) * np.abs(DY).reshape(-1, h).sum(0)).all()


def test_layer_norm_is_paddles_outside_training(ops):
    x, w, b = _t(np.ones([2, 8])), _t(np.ones(8)), _t(np.zeros(8))
    with paddle.no_grad():
        assert kernels.layer_norm(x, w, b, 1e-5) is None  # inference keeps Paddle's kernel
    assert kernels.layer_norm(x.astype("float64"), w.astype("float64"), b.astype("float64"), 1e-5) is None
    assert kernels.layer_norm(x, w, b, 1e-5) is not None


# ------------------------------------------------------------------------------------ cross entropy
def test_softmax_cross_entropy_within_fp32_bounds_and_ignore_index(ops):
    rng = np.random.default_rng(1)
    n, v = 24, 40000
    logits = (rng.standard_normal([2, n // 2, v]) * 4).astype("float32")
    labels = rng.integers(0, v, [2, n // 2]).astype("int64")
    labels[0, 3] = -100
    dloss = rng.standard_normal([2, n // 2]).astype("float32")
    lt = _t(logits, True)
    loss = kernels.softmax_cross_entropy(lt, paddle.to_tensor(labels))
    assert loss.shape == [2, n // 2]
    (grad,) = paddle.grad([loss], [lt], [_t(dloss)])

    L = logits.astype("float64").reshape(n, v)
    y = labels.reshape(n)
    m = L.max(-1, keepdims=True)
    s = np.exp(L - m).sum(-1, keepdims=True)
    lse = (m + np.log(s))[:, 0]
    keep = y != -100
    ref = np.where(keep, lse - L[np.arange(n), np.where(keep, y, 0)], 0.0)
    # the sum of V positive exps: E_EXP + rounding of x - m (u) + gamma(V); log and the two subtractions
    # add u |lse| each
    bound = (E_EXP + U + gamma(v)) + 3 * U * (np.abs(lse) + np.abs(ref))
    got = loss.numpy().reshape(n)
    assert (np.abs(got - ref) <= bound).all()
    assert got[3] == 0.0

    p = np.exp(L - lse[:, None])
    d = dloss.reshape(n, 1).astype("float64")
    ref_g = p * d
    ref_g[np.arange(n)[keep], y[keep]] -= d[keep, 0]
    ref_g[~keep] = 0.0
    # exp(x - lse): lse carries `bound`, the exp E_EXP, two roundings; minus d at the label: u |d|
    bound_g = p * np.abs(d) * (bound[:, None] + E_EXP + 3 * U) + U * np.abs(d)
    g = grad.numpy().reshape(n, v)
    assert (np.abs(g - ref_g) <= bound_g).all()
    assert (g[3] == 0).all()


def test_softmax_cross_entropy_propagates_non_finite_and_refuses_bad_labels(ops):
    logits = np.zeros([3, 100], dtype="float32")
    logits[1, 7] = np.nan
    logits[2, 9] = np.inf
    loss = kernels.softmax_cross_entropy(_t(logits, True), paddle.to_tensor(np.array([1, 2, 3])))
    got = loss.numpy()
    assert got[0] == pytest.approx(np.log(100), rel=1e-6) and np.isnan(got[1]) and np.isnan(got[2])
    with pytest.raises(Exception, match="label 100 outside"):
        kernels.softmax_cross_entropy(_t(np.zeros([2, 100]), True), paddle.to_tensor(np.array([0, 100])))


# ----------------------------------------------------------------------------------- masked softmax
@pytest.mark.parametrize("mask_batch", [1, 2])
def test_masked_softmax_within_fp32_bounds(ops, mask_batch):
    rng = np.random.default_rng(2)
    b, nh, s, t = 2, 3, 17, 33  # T not a multiple of 8: the vector loop's tail runs too
    x = (rng.standard_normal([b, nh, s, t]) * 3).astype("float32")
    mask = np.where(np.tril(np.ones([s, t]), t - s) > 0, 0.0, -10000.0).astype("float32")
    mask = np.broadcast_to(mask, [mask_batch, 1, s, t]).copy()
    mask[-1, 0, 0, 0] = -10000.0  # the batches differ when there are two
    dp = rng.standard_normal(x.shape).astype("float32")
    xt = _t(x, True)
    p = kernels.masked_softmax(xt, _t(mask))
    (gx,) = paddle.grad([p], [xt], [_t(dp)])

    z = x.astype("float64") + mask
    e = np.exp(z - z.max(-1, keepdims=True))
    ref = e / e.sum(-1, keepdims=True)
    # z = x + mask and z - m: 2u of |z| relative to each exp's argument; exp E_EXP; the sum gamma(T); 2 more
    rel = 2 * U * np.abs(z).max(-1, keepdims=True) + E_EXP + gamma(t) + 2 * U
    assert (np.abs(p.numpy() - ref) <= 2 * rel * ref + 2 * TINY).all()
    D = dp.astype("float64")
    dot = (D * ref).sum(-1, keepdims=True)
    ref_g = ref * (D - dot)
    bound_g = np.abs(ref_g) * 2 * rel + ref * (gamma(t) * (np.abs(D) * ref).sum(-1, keepdims=True)
                                               + (np.abs(D) * ref * 2 * rel).sum(-1, keepdims=True) + U * np.abs(D - dot))
    assert (np.abs(gx.numpy() - ref_g) <= bound_g + 2 * TINY * np.abs(D).max()).all()


def test_masked_softmax_nan_row_and_one_thread_equals_two(ops):
    x = np.random.default_rng(3).standard_normal([1, 2, 4, 40]).astype("float32")
    x[0, 1, 2, 5] = np.nan
    mask = np.zeros([1, 1, 4, 40], dtype="float32")
    one = ops.pangu_masked_softmax(_t(x), _t(mask), 1)[0].numpy()
    two = ops.pangu_masked_softmax(_t(x), _t(mask), 2)[0].numpy()
    assert np.isnan(one[0, 1, 2]).all() and not np.isnan(np.delete(one.reshape(8, 40), 6, 0)).any()
    np.testing.assert_array_equal(one, two)  # rows are independent: threads change nothing


# -------------------------------------------------------------------------------------------- AdamW
def test_pangu_adamw_tracks_paddles_adamw_within_fp32_bounds(monkeypatch):
    from paddle_pangu.training import optim

    calls = []
    real = optim.kernels.adamw_
    monkeypatch.setattr(optim.kernels, "adamw_", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(cls):
        paddle.seed(5)
        lin = paddle.nn.Linear(64, 300)  # weight decays, bias does not
        decayed = {lin.weight.name}
        opt = cls(learning_rate=3e-3, parameters=lin.parameters(), beta1=0.9, beta2=0.95, epsilon=1e-8,
                  weight_decay=0.1, apply_decay_param_fun=lambda name: name in decayed)
        x = paddle.to_tensor(np.random.default_rng(6).standard_normal([8, 64]).astype("float32"))
        for _ in range(steps):
            (lin(x) ** 2).mean().backward()
            opt.step()
            opt.clear_grad()
        return [p.numpy() for p in lin.parameters()], opt.state_dict()

    steps = 5
    ref, ref_state = run(paddle.optimizer.AdamW)
    assert calls == []
    got, state = run(optim.PanGuAdamW)
    assert len(calls) == 2 * steps  # both parameters, every step, took the kernel
    def layout(st):  # accumulator names without the layer's unique prefix, with their shapes
        return sorted((k.split(".", 1)[-1], tuple(getattr(v, "shape", ()))) for k, v in st.items())

    assert layout(state) == layout(ref_state)  # the same accumulators (checkpoints are Paddle's)
    for g, r in zip(got, ref):
        # per step the two fp32 evaluations of the same formula differ by at most a few roundings of
        # |p| and of the step (|step| <= lr / (1 - beta1^t) <= 10 lr here); the gradients then differ
        # through p, which over 5 steps stays inside the same envelope
        step_max = 3e-3 * 10
        assert np.abs(g - r).max() <= steps * 6 * U * (np.abs(r).max() + step_max)


def test_pangu_adamw_falls_back_for_master_weights_and_amsgrad():
    from paddle_pangu.training import optim

    lin = paddle.nn.Linear(4, 4)
    opt = optim.PanGuAdamW(learning_rate=1e-3, parameters=lin.parameters(), amsgrad=True)
    lin(paddle.ones([2, 4])).sum().backward()
    opt.step()  # Paddle's op (the kernel has no amsgrad): no error, the accumulator exists
    assert any("moment2_max" in k for k in opt.state_dict())


# --------------------------------------------------------------------------------- switches, build
def test_disabled_and_failed_builds_fall_back_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_STATE", {"module": None, "tried": False, "reason": None})
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert kernels.load() is None and kernels.reason() == f"{kernels.DISABLE_ENV}=1"
    x = _t(np.ones([2, 8]), True)
    assert kernels.layer_norm(x, _t(np.ones(8)), _t(np.zeros(8)), 1e-5) is None

    from paddle.utils import cpp_extension

    def no_compiler(**_):
        raise RuntimeError("g++: command not found")

    monkeypatch.setattr(kernels, "_STATE", {"module": None, "tried": False, "reason": None})
    monkeypatch.delenv(kernels.DISABLE_ENV)
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    assert kernels.load() is None
    assert "build failed (RuntimeError: g++: command not found" in kernels.reason()


def test_a_damaged_cached_build_is_rebuilt_not_loaded(monkeypatch, tmp_path, capsys):
    from paddle.utils import cpp_extension

    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "_STATE", {"module": None, "tried": False, "reason": None})
    where = kernels.build_dir()
    library = where / f"pangu_cpu_kernels_{where.name}" / f"pangu_cpu_kernels_{where.name}.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF cut short")  # what a build killed mid-link can leave
    builds = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: builds.append(kw["name"]))
    assert kernels.load() is not None and builds == [library.stem]
    assert not library.exists()  # the damaged file was removed before building again
    assert "does not load" in capsys.readouterr().err


def test_a_second_process_loads_the_cached_build_without_rebuilding(ops):
    code = ("import paddle, numpy as np; from paddle_pangu import kernels; m = kernels.load(); "
            "assert m is not None, kernels.reason(); x = paddle.ones([2, 8]); x.stop_gradient = False; "
            "y = kernels.layer_norm(x, paddle.full([8], 2.0), paddle.full([8], 3.0), 1e-5); "
            "print(float(y.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PANGU_QUIET_RUNTIME": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "building" not in out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(48.0)  # (0 * 2 + 3) * 16


def test_the_model_uses_the_kernels_in_training_and_paddle_at_inference(ops, monkeypatch):
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    used = []
    for name in ("layer_norm", "softmax_cross_entropy", "masked_softmax", "swap_dims12"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _r=real, _n=name, **k: used.append((_n, _r(*a, **k) is not None))
                            or _r(*a, **k))
    cfg = get_preset("tiny", vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    paddle.seed(0)
    model = PanGuForCausalLM(cfg)
    ids = paddle.to_tensor(np.random.default_rng(0).integers(10, 300, [2, 16]))
    loss = model(ids, labels=ids)
    loss = loss[0] if isinstance(loss, (tuple, list)) else loss
    assert {n for n, hit in used if hit} == {"layer_norm", "softmax_cross_entropy", "masked_softmax", "swap_dims12"}
    with kernels.disabled():
        ref = model(ids, labels=ids)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    # the same step through Paddle's kernels: equal to fp32 rounding of the loss (a sum of logs, ~1e-6 rel)
    assert abs(float(loss) - float(ref)) <= 1e-5 * abs(float(ref))
    used.clear()
    with paddle.no_grad():
        model(ids)
    assert used and not any(hit for _, hit in used)


def test_strided_gradients_are_read_as_their_values(ops):
    # the gradient reaching the kernel through a transpose is a strided view: read by value, not memory order
    rng = np.random.default_rng(7)
    x = _t(rng.standard_normal([3, 5, 16]), True)
    w, b = _t(rng.standard_normal(16), True), _t(rng.standard_normal(16), True)
    g = rng.standard_normal([3, 16, 5]).astype("float32")
    y = kernels.layer_norm(x, w, b, 1e-5)
    (via_transpose,) = paddle.grad([y.transpose([0, 2, 1])], [x], [_t(g)])
    (direct,) = paddle.grad([kernels.layer_norm(x, w, b, 1e-5)], [x], [_t(g.transpose(0, 2, 1))])
    np.testing.assert_array_equal(via_transpose.numpy(), direct.numpy())


def test_swap_dims12_is_the_transpose_and_its_own_gradient(ops):
    x = _t(np.random.default_rng(8).standard_normal([2, 5, 3, 7]), True)
    y = kernels.swap_dims12(x)
    np.testing.assert_array_equal(y.numpy(), x.numpy().transpose(0, 2, 1, 3))
    g = np.random.default_rng(9).standard_normal([2, 3, 5, 7]).astype("float32")
    (gx,) = paddle.grad([y], [x], [_t(g)])
    np.testing.assert_array_equal(gx.numpy(), g.transpose(0, 2, 1, 3))


def test_linear_is_addmm_with_a_column_sum_bias_gradient(ops):
    rng = np.random.default_rng(10)
    x = _t(rng.standard_normal([3, 7, 32]), True)
    w, b = _t(rng.standard_normal([32, 200]), True), _t(rng.standard_normal(200), True)
    g = _t(rng.standard_normal([3, 7, 200]))
    y = kernels.linear(x, w, b)
    grads = paddle.grad([y], [x, w, b], [g])
    ref_y = paddle.addmm(b, x.reshape([-1, 32]), w).reshape([3, 7, 200])
    ref = paddle.grad([ref_y], [x, w, b], [g])
    np.testing.assert_array_equal(y.numpy(), ref_y.numpy())  # Paddle's addmm itself
    np.testing.assert_array_equal(grads[0].numpy(), ref[0].numpy())  # and its matmuls
    np.testing.assert_array_equal(grads[1].numpy(), ref[1].numpy())
    rows = g.numpy().reshape(-1, 200)
    # the bias gradient: 21 rows added in order, per column: gamma(21) of the sum of |dy|
    assert (np.abs(grads[2].numpy() - rows.astype("float64").sum(0)) <= gamma(21) * np.abs(rows).sum(0)).all()
