"""The fused decode layer (inference/fused_decode.py, int8_kernels.cc DecodeLayer; issue 25) against a float64
reference of the layer's math with a running error bound derived from fp32 rounding, and against the general
ops (the model's own PanGuBlock / PanGuQueryLayer with a (k, v) cache) within the same bound.

Bound (first order in u = 2^-24, gamma(n) = n u / (1 - n u)). Inputs (x, the cache, the weights as the kernels
decode them) are exact; for each computed quantity z the bound e(z) on |fl(z) - z| follows the layer:
  LN (either algorithm, fp32 sums): d_mean <= gamma(H) mean|x|; d_var <= gamma(H + 3) mean(x^2) + 2 |mean| d_mean;
     rel(rstd) <= d_var / (2 (var + eps)) + gamma(2); d_n_i <= rstd (d_mean + |x_i - mean| rel(rstd)) + gamma(2)|n_i|
     + the input's error through the LN Jacobian rstd (e_i + mean(e) + |n_i| mean(|n| e)); y = n w + b adds
     |w| d_n + gamma(2)(|n w| + |b|)
  linear y = W a + b (the kernels' own sums, K products): e(y) <= |W| e(a) + gamma(K + 2)(|W| |a| + |b|)
  q / sqrt(hd): + u |q|
  scores s_j = q.k_j + mask_j: e(s_j) <= e(q).|k_j| + |q|.e(k_j) + gamma(hd) |q|.|k_j| + u |s_j|
  softmax p: e(p_j) <= p_j (e(s_j) + sum_l p_l e(s_l) + r_j + sum_l p_l r_l + gamma(T + 1)), r_j = u |s_j - max| + 8u
     (the subtraction before exp, and an exp accurate to 8 units of u: Paddle's vectorised exp and glibc's)
  ctx = sum_j p_j v_j: e <= sum_j (e(p_j) |v_j| + p_j e(v_j)) + gamma(T + 1) sum_j p_j |v_j|
  residual x + y: e(x) + e(y) + u |x + y|
  gelu_tanh g = f/2 (1 + tanh(z)): e(g) <= |g'(f)| e(f) + |f|/2 (gamma(6) |z| + 13u) + gamma(4) |g|, with a tanh
     accurate to 13u absolute (the kernel's 1 - 2 / (exp(2z) + 1): its exp (glibc's, or Cephes' polynomial at the
     AVX-512 level) within 4u relative, + 1 and 2 / d one rounding each, so 2 / d in (0, 2) is within 12u, and
     the final subtraction u); Paddle's tanh is assumed as accurate
Both the fused call and the general ops must lie within e of the float64 value, so they differ by at most 2e.
The inputs are large (x std 3, cache keys std 2, values std 5) and the padded keys point along the query, so a
wrong mask, a k / v written to the wrong cache column, or a missing residual moves the result far beyond e
(checked on the reference itself).
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_pangu import kernels
from paddle_pangu.inference.fused_decode import FusedCache, FusedDecoder, set_fused_decode
from paddle_pangu.inference.quantize import quantize_model

U = 2.0 ** -24


def gamma(n):
    return n * U / (1 - n * U)


@pytest.fixture(scope="module")
def models():
    """{mode: the tiny model converted to mode} (one set of fp32 weights, std 0.02: REF "init"'s initializer
    range; the worst-case bound grows with the weights' row sums |W| 1 through the layer's four GEMVs, and at
    std 0.02 it stays a few percent of the smallest outputs while each planted mistake moves them hundreds of
    times the bound)."""
    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(11)
    cfg = get_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = PanGuForCausalLM(cfg)
    with paddle.no_grad():
        for p in base.parameters():
            if len(p.shape) == 2:
                p.set_value(paddle.randn(p.shape) * 0.02)
    out = {}
    for mode in ("int8", "bf16"):
        m = PanGuForCausalLM(cfg)
        m.set_state_dict(base.state_dict())
        out[mode] = quantize_model(m, mode)
    return out


def _ln(x, e, w, b, eps):
    """float64 LayerNorm of rows x [B, H] and its error bound, given the input's bound e [B, H]."""
    h = x.shape[-1]
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    n = (x - mean) * rstd
    d_mean = gamma(h) * np.abs(x).mean(-1, keepdims=True)
    d_var = gamma(h + 3) * (x ** 2).mean(-1, keepdims=True) + 2 * np.abs(mean) * d_mean
    rel = d_var / (2 * (var + eps)) + gamma(2)
    d_n = rstd * (d_mean + np.abs(x - mean) * rel) + gamma(2) * np.abs(n)
    d_n = d_n + rstd * (e + e.mean(-1, keepdims=True) + np.abs(n) * (np.abs(n) * e).mean(-1, keepdims=True))
    y = n * w + b
    return y, np.abs(w) * d_n + gamma(2) * (np.abs(n * w) + np.abs(b))


def _linear(a, e, w, b):
    """y = a W^T + b for W [N, K] (float64), its bound from a's bound e."""
    return a @ w.T + b, e @ np.abs(w).T + gamma(w.shape[1] + 2) * (np.abs(a) @ np.abs(w).T + np.abs(b))


def _gelu_tanh(f, e):
    c = np.sqrt(2 / np.pi)
    z = c * (f + 0.044715 * f ** 3)
    t = np.tanh(z)
    g = 0.5 * f * (1 + t)
    dg = 0.5 * (1 + t) + 0.5 * f * (1 - t ** 2) * c * (1 + 3 * 0.044715 * f ** 2)
    zabs = c * (np.abs(f) + 0.044715 * np.abs(f) ** 3)
    return g, np.abs(dg) * e + 0.5 * np.abs(f) * (gamma(6) * zabs + 13 * U) + gamma(4) * np.abs(g)


def reference(layer, x, query, kc, vc, mask, t, *, query_layer, eps, nh, mutate=None):
    """float64 (out [B, H], k_new, v_new [B, nh, hd]) of one decode layer and their bounds. `layer`: dict of float64
    weights (q, k, v, out, fc_in, fc_out as [N, K] + biases) and norms. mutate: None, "mask" (padding ignored),
    "column" (the new k / v written over column t - 1), "residual" (the attention residual left out)."""
    b, h = x.shape
    hd = h // nh
    zero = np.zeros_like(x)
    a, ea = _ln(x, zero, layer["ln1_w"], layer["ln1_b"], eps)
    if query_layer:
        q, eq = _linear(query, zero, layer["q_w"], layer["q_b"])
    else:
        q, eq = _linear(a, ea, layer["q_w"], layer["q_b"])
    k, ek = _linear(a, ea, layer["k_w"], layer["k_b"])
    v, ev = _linear(a, ea, layer["v_w"], layer["v_b"])
    q, eq = q / np.sqrt(hd), eq / np.sqrt(hd) + U * np.abs(q / np.sqrt(hd))
    col = t - 1 if mutate == "column" else t
    keys, vals = kc[:, :, : col + 1].copy(), vc[:, :, : col + 1].copy()  # [B, nh, T, hd]
    keys[:, :, col], vals[:, :, col] = k.reshape(b, nh, hd), v.reshape(b, nh, hd)
    ekeys, evals = np.zeros_like(keys), np.zeros_like(vals)
    ekeys[:, :, col], evals[:, :, col] = ek.reshape(b, nh, hd), ev.reshape(b, nh, hd)
    qh, eqh = q.reshape(b, nh, 1, hd), eq.reshape(b, nh, 1, hd)
    add = np.where(mask[:, : col + 1] > 0, 0.0, -10000.0)[:, None, None, :]  # [B, 1, 1, T], REF additive mask
    if mutate == "mask":
        add = np.zeros_like(add)
    s = qh @ keys.transpose(0, 1, 3, 2) + add  # [B, nh, 1, T]
    es = eqh @ np.abs(keys).transpose(0, 1, 3, 2) + np.abs(qh) @ ekeys.transpose(0, 1, 3, 2) \
        + gamma(hd) * np.abs(qh) @ np.abs(keys).transpose(0, 1, 3, 2) + U * np.abs(s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    tt = s.shape[-1]
    r = U * np.abs(s - s.max(-1, keepdims=True)) + 8 * U
    ep = p * (es + (p * es).sum(-1, keepdims=True) + r + (p * r).sum(-1, keepdims=True) + gamma(tt + 1))
    ctx = p @ vals  # [B, nh, 1, hd]
    ectx = ep @ np.abs(vals) + p @ evals + gamma(tt + 1) * (p @ np.abs(vals))
    ctx, ectx = ctx.reshape(b, h), ectx.reshape(b, h)
    o, eo = _linear(ctx, ectx, layer["out_w"], layer["out_b"])
    x1 = o if mutate == "residual" else x + o
    ex1 = eo + U * np.abs(x1)
    a2, ea2 = _ln(x1, ex1, layer["ln2_w"], layer["ln2_b"], eps)
    f, ef = _linear(a2, ea2, layer["fc_in_w"], layer["fc_in_b"])
    g, eg = _gelu_tanh(f, ef)
    y, ey = _linear(g, eg, layer["fc_out_w"], layer["fc_out_b"])
    out = x1 + y
    return (out, out * 0 + ex1 + ey + U * np.abs(out), k.reshape(b, nh, hd), ek.reshape(b, nh, hd),
            v.reshape(b, nh, hd), ev.reshape(b, nh, hd))


def _float64_layer(block):
    att, mlp = block.attention, block.mlp
    out = {f"{name}_w": m.dequantized() for name, m in (("q", att.q_proj), ("k", att.k_proj), ("v", att.v_proj),
                                                         ("out", att.out_proj), ("fc_in", mlp.fc_in),
                                                         ("fc_out", mlp.fc_out))}
    out.update({f"{name}_b": m.bias.numpy().astype(np.float64) for name, m in (
        ("q", att.q_proj), ("k", att.k_proj), ("v", att.v_proj), ("out", att.out_proj), ("fc_in", mlp.fc_in),
        ("fc_out", mlp.fc_out))})
    for name, ln in (("ln1", block.input_layernorm), ("ln2", block.post_attention_layernorm)):
        out[f"{name}_w"], out[f"{name}_b"] = ln.weight.numpy().astype(np.float64), ln.bias.numpy().astype(np.float64)
    return out


def _levels():
    _, best = kernels.int8_isa()
    return list(kernels.INT8_LEVELS[: kernels.INT8_LEVELS.index(best) + 1])


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_fused_layer_and_general_ops_within_the_derived_bound_of_float64(models, mode, monkeypatch):
    """Every block and the query layer, batch 2 (row 0 left-padded by 2), t = 5 cached columns in a cache of
    capacity 8, at every ISA level this CPU has: out, and the new k / v in cache column t, within the bound of
    the float64 layer, for the fused call and for the model's own layer; columns other than t untouched; and
    each planted mistake (mask ignored, wrong cache column, no residual) moves the float64 value beyond it."""
    from paddle_pangu.model.modeling import cache_mask, to_additive_mask

    model = models[mode]
    cfg = model.config
    nh, h, t, cap = cfg.num_attention_heads, cfg.hidden_size, 5, 8
    hd = h // nh
    fused = FusedDecoder(model)
    rng = np.random.default_rng(3)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], "int64")  # [B, t + 1]
    blocks = list(model.pangu.layers) + [model.pangu.query_layer]
    for i, block in enumerate(blocks):
        query_layer = i == len(blocks) - 1
        layer = _float64_layer(block)
        x = (rng.standard_normal((2, h)) * 3).astype(np.float32)
        query = (rng.standard_normal((2, h)) * 3).astype(np.float32)
        kc = (rng.standard_normal((2, nh, cap, hd)) * 2).astype(np.float32)
        vc = (rng.standard_normal((2, nh, cap, hd)) * 5).astype(np.float32)
        # the padded keys of row 0 point along its query: unmasked, they would take the softmax
        src = query.astype(np.float64) if query_layer else _ln(x.astype(np.float64), np.zeros((2, h)),
                                                                 layer["ln1_w"], layer["ln1_b"], cfg.layer_norm_eps)[0]
        q0 = (src @ layer["q_w"].T + layer["q_b"])[0].reshape(nh, hd)
        kc[0, :, :2] = (q0 / np.linalg.norm(q0, axis=1, keepdims=True) * 8)[:, None, :]
        x64, q64, kc64, vc64 = (a.astype(np.float64) for a in (x, query, kc, vc))
        kw = dict(query_layer=query_layer, eps=cfg.layer_norm_eps, nh=nh)
        out, e_out, k_new, e_k, v_new, e_v = reference(layer, x64, q64, kc64, vc64, mask, t, **kw)
        for mutate in ("mask", "column", "residual"):
            wrong = reference(layer, x64, q64, kc64, vc64, mask, t, mutate=mutate, **kw)[0]
            assert (np.abs(wrong - out) > 10 * e_out).any(), f"{mutate}: the bound could not see this mistake"

        for level in _levels():
            monkeypatch.setenv("PANGU_INT8_ISA", level)
            xt, kt, vt = (paddle.to_tensor(a.copy()) for a in (x[:, None], kc, vc))
            args = fused.layers[i]  # (norms, weights, scales, biases) int8, (norms, weights, biases) bf16
            run = kernels.int8_decode_layer_ if mode == "int8" else kernels.bf16_decode_layer_
            run(xt, paddle.to_tensor(query[:, None]), *args, kt, vt, paddle.to_tensor(mask), t, cfg.layer_norm_eps,
                0, query_layer, 1)
            got, kg, vg = xt.numpy()[:, 0], kt.numpy(), vt.numpy()
            assert (np.abs(got - out) <= e_out).all(), (mode, level, i, np.abs(got - out).max())
            assert (np.abs(kg[:, :, t] - k_new) <= e_k).all() and (np.abs(vg[:, :, t] - v_new) <= e_v).all()
            others = [c for c in range(cap) if c != t]
            np.testing.assert_array_equal(kg[:, :, others], kc[:, :, others])
            np.testing.assert_array_equal(vg[:, :, others], vc[:, :, others])

        # the general ops: the model's own layer with a (k, v) cache of the t columns and the additive mask
        add = to_additive_mask(cache_mask(1, t, paddle.to_tensor(mask)))
        past = (paddle.to_tensor(kc[:, :, :t]), paddle.to_tensor(vc[:, :, :t]))
        with paddle.no_grad():
            if query_layer:  # its query source given directly (forward looks it up in the top query embedding)
                general, (kg, vg) = block._attend(paddle.to_tensor(x[:, None]), add, paddle.to_tensor(query[:, None]),
                                                  past, True)
            else:
                general, (kg, vg) = block(paddle.to_tensor(x[:, None]), add, past, True)
        err = np.abs(general.numpy()[:, 0] - out)
        assert (err <= e_out).all(), (mode, i, err.max())
        assert (np.abs(kg.numpy()[:, :, t] - k_new) <= e_k).all()


def test_fused_steps_give_the_general_steps_greedy_tokens(models, monkeypatch):
    """`generate` (the stepper and batch decoder `pangu generate` uses), fused on and off, over a left-padded batch
    of 3 prompts for 12 greedy tokens with the cache's capacity forced small (it is copied into larger buffers
    every other step, so the regrowth runs): the same tokens, and the fused layer op is what ran. The tokens may
    only differ where the top-2 logit gap is within the fused / general difference; the per-layer bound above
    is ~1e-6 of the values, so the test also requires every step's gap of the general path to exceed 1e-3 of
    its largest |logit| (a tie would make the comparison meaningless rather than failing it)."""
    from paddle_pangu.inference import fused_decode
    from paddle_pangu.inference import generation

    model = models["int8"]
    prompts = [[101, 202, 303, 404], [11, 12, 13, 14, 15, 16], [7, 8]]
    calls = []
    real = kernels.int8_decode_layer_
    monkeypatch.setattr(kernels, "int8_decode_layer_", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(fused_decode, "grown_capacity", lambda t, context: t + 2)  # regrow every other step
    fused = generation.generate(model, prompts, max_new_tokens=12)
    assert calls and len(calls) % model.config.num_layers == 0
    gaps = []
    real_call = generation.DygraphStepper.__call__

    def record(self, *args):
        logits, cache = real_call(self, *args)
        top = np.sort(logits, axis=-1)
        gaps.extend((top[:, -1] - top[:, -2]) / np.abs(logits).max(-1))
        return logits, cache

    previous = set_fused_decode(False)
    monkeypatch.setattr(generation.DygraphStepper, "__call__", record)
    try:
        calls.clear()
        general = generation.generate(model, prompts, max_new_tokens=12)
    finally:
        set_fused_decode(previous)
    assert not calls and fused == general, (fused, general)
    assert len(gaps) >= 12 and min(gaps) > 1e-3, min(gaps)


def test_rows_joining_and_leaving_a_fused_batch_get_the_op_by_op_tokens(models):
    """The batch decoder's row changes on a FusedCache (what `pangu serve` does between steps): a row that ends
    early (its cache rows dropped: select, then the unused left columns trimmed) and a row that joins mid-run
    (both caches left-padded to one width and concatenated) give every row the tokens of the op-by-op path."""
    from paddle_pangu.inference.decoding import BatchDecoder, Row
    from paddle_pangu.inference.generation import DygraphStepper
    from paddle_pangu.inference.sampling import SamplingConfig

    model = models["bf16"]

    def decode(fused_on):
        rows = [Row([101, 202, 303], SamplingConfig(max_new_tokens=3)),
                Row([11, 12, 13, 14, 15, 16, 17], SamplingConfig(max_new_tokens=9))]
        late = Row([7, 8], SamplingConfig(max_new_tokens=6))
        dec = BatchDecoder(DygraphStepper(model), model.config)
        dec.add(rows)
        for _ in range(4):  # row 0 ends after its third token
            dec.step()
        assert isinstance(dec.cache, FusedCache) == fused_on  # the fused steps ran (and their cache is converted)
        dec.add([late])
        while dec.rows:
            dec.step()
        return [r.tokens for r in rows + [late]]

    fused = decode(True)
    previous = set_fused_decode(False)
    try:
        general = decode(False)
    finally:
        set_fused_decode(previous)
    assert [len(t) for t in fused] == [3, 9, 6] and fused == general, (fused, general)


def _activations(f):
    """{model hidden_act: (float64 value, bound on the fp32 kernel's error)} for exact inputs f (float64).
    gelu_tanh: the module docstring's term. gelu (erf): the argument f / sqrt(2) one rounding, erf' <= 2 / sqrt(pi)
    and an erf within 2u absolute, then 1 + and two products: |f|/2 (0.8u |f| + 2u + 2u) + gamma(2) |g|.
    fast_gelu f / (1 + exp(-1.702 f)): the exponent's rounding u 1.702 |f| and the exp's 4u as relative errors
    of exp, damped by e / (1 + e) <= 1, then + 1 and / one rounding each: |g| (1.702 u |f| + 4u + 2u)."""
    from math import erf

    g_tanh, e_tanh = _gelu_tanh(f, np.zeros_like(f))
    g_erf = 0.5 * f * (1 + np.vectorize(erf)(f / np.sqrt(2)))
    e_erf = 0.5 * np.abs(f) * (0.8 * U * np.abs(f) + 4 * U) + gamma(2) * np.abs(g_erf)
    g_fast = f / (1 + np.exp(-1.702 * f))
    e_fast = np.abs(g_fast) * (1.702 * U * np.abs(f) + 6 * U)
    return {"gelu_tanh": (g_tanh, e_tanh), "gelu": (g_erf, e_erf), "fast_gelu": (g_fast, e_fast)}


def test_the_layers_activations_within_their_bounds_at_every_level(monkeypatch):
    """The fused layer's activation for each hidden_act (its code from fused_decode.ACT_CODES; gelu_tanh
    vectorised at the AVX-512 level, the scalar formulas otherwise) against float64 over [-12, 12] (200001
    points: both tails and 0) and 50000 normal draws x 3, within the derived bounds (_activations); and the
    model's own activation (model/layers.activation, Paddle fp32) within the same bound, so a code mapped to
    the wrong function fails."""
    from paddle_pangu.inference.fused_decode import ACT_CODES
    from paddle_pangu.model.layers import activation

    f = np.concatenate([np.linspace(-12, 12, 200001), np.random.default_rng(0).standard_normal(50000) * 3])
    f = f.astype(np.float32)
    refs = _activations(f.astype(np.float64))
    for name, (ref, bound) in refs.items():
        model_act = activation(name)(paddle.to_tensor(f)).numpy().astype(np.float64)
        assert (np.abs(model_act - ref) <= bound).all(), name
        for level in _levels():
            monkeypatch.setenv("PANGU_INT8_ISA", level)
            got = kernels.load_int8().pangu_decode_activation(paddle.to_tensor(f), ACT_CODES[name])[0].numpy()
            err = np.abs(got.astype(np.float64) - ref)
            assert (err <= bound).all(), (name, level, f[np.argmax(err - bound)])
