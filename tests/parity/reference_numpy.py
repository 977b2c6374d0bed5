"""An independent numpy forward pass of PanGu-alpha, written from the reference facts only.

It never imports paddle_pangu: every fact below is taken from
docs/REFERENCE.md ("REF") so that the converters and the
Paddle model can be checked against it.

Parameters are a plain nested dict in the torch / "math" convention: every
dense weight is stored [out, in] and applied as `y = x @ W.T + b`:

    {"wte": [V, H], "wpe": [S, H], "wqe": [S, H],
     "blocks": [layer, ...],            # num_layers - 1 ordinary blocks
     "query": layer,                    # the top query layer
     "ln_f_g": [H], "ln_f_b": [H]}      # final LN, applied BEFORE the query layer
    layer = {"ln1_g", "ln1_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
             "ln2_g", "ln2_b", "w_in" [F, H], "b_in" [F], "w_out" [H, F], "b_out" [H]}

All arithmetic is float64.
"""
from __future__ import annotations

import math

import numpy as np

MASK_VALUE = -10000.0  # REF "attention": additive mask
LAYER_KEYS = ("ln1_g", "ln1_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
              "ln2_g", "ln2_b", "w_in", "b_in", "w_out", "b_out")


def init_params(vocab: int, hidden: int, num_layers: int, ffn: int, seq: int, seed: int = 0,
                dtype=np.float32) -> dict:
    """Random parameters; layernorm gains/biases are random too so a wrong gamma/beta mapping shows."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(dtype)

    def layer():
        return {
            "ln1_g": 1.0 + normal(hidden, std=0.1), "ln1_b": normal(hidden, std=0.1),
            "wq": normal(hidden, hidden, std=0.1), "bq": normal(hidden),
            "wk": normal(hidden, hidden, std=0.1), "bk": normal(hidden),
            "wv": normal(hidden, hidden, std=0.1), "bv": normal(hidden),
            "wo": normal(hidden, hidden, std=0.1), "bo": normal(hidden),
            "ln2_g": 1.0 + normal(hidden, std=0.1), "ln2_b": normal(hidden, std=0.1),
            "w_in": normal(ffn, hidden, std=0.1), "b_in": normal(ffn),
            "w_out": normal(hidden, ffn, std=0.1), "b_out": normal(hidden),
        }

    return {
        "wte": normal(vocab, hidden, std=0.5), "wpe": normal(seq, hidden, std=0.5), "wqe": normal(seq, hidden, std=0.5),
        "blocks": [layer() for _ in range(num_layers - 1)],
        "query": layer(),
        "ln_f_g": 1.0 + normal(hidden, std=0.1), "ln_f_b": normal(hidden, std=0.1),
    }


def layer_norm(x, g, b, eps=1e-5):
    """REF "layernorm": eps 1e-5."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def activation(x, name: str):
    """REF "activation": gelu_tanh (released), gelu (erf, HF port), fast_gelu x*sigmoid(1.702x)."""
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if name == "gelu":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if name == "fast_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    raise ValueError(f"unknown activation {name!r}")


def positions_and_mask(input_ids, eod_token_id=None):
    """Position ids [B, S] and boolean mask [B, S, S] (True = may attend).

    Without eod_token_id: plain causal. With it (REF "document boundaries"):
    positions restart after each separator, attention is block-diagonal causal;
    the separator belongs to the document it ends.
    """
    b, s = input_ids.shape
    pos = np.tile(np.arange(s), (b, 1))
    mask = np.tile(np.tril(np.ones((s, s), dtype=bool)), (b, 1, 1))
    if eod_token_id is None:
        return pos, mask
    for r in range(b):
        doc, start = 0, 0
        docs = np.zeros(s, dtype=np.int64)
        for t in range(s):
            docs[t] = doc
            pos[r, t] = t - start
            if input_ids[r, t] == eod_token_id:
                doc, start = doc + 1, t + 1
        mask[r] &= docs[:, None] == docs[None, :]
    return pos, mask


def _linear(x, w, bias):
    return x @ w.T.astype(np.float64) + bias.astype(np.float64)


def attention(q_in, kv_in, p, mask, num_heads, record=None):
    """Separate Q, K, V dense layers; softmax(QK^T/sqrt(hd) + mask) V; output dense (REF "attention").

    record: a list that receives (scores [B, nh, S, S] before the mask, probs, mask [B, S, S]) per call."""
    b, s, h = kv_in.shape
    hd = h // num_heads

    def heads(x):  # [B, S, H] -> [B, nh, S, hd]
        return x.reshape(b, s, num_heads, hd).transpose(0, 2, 1, 3)

    q = heads(_linear(q_in, p["wq"], p["bq"]))  # REF "query layer": q_in may differ from kv_in
    k = heads(_linear(kv_in, p["wk"], p["bk"]))
    v = heads(_linear(kv_in, p["wv"], p["bv"]))
    scores_raw = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)  # [B, nh, S, S]
    scores = scores_raw + np.where(mask[:, None], 0.0, MASK_VALUE)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(-1, keepdims=True)
    if record is not None:
        record.append((scores_raw, probs, mask))
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)  # [B, S, H]
    return _linear(ctx, p["wo"], p["bo"])


def block(x, p, mask, num_heads, act, eps, query=None, record=None):
    """Pre-LN block; for the query layer the attention query comes from `query` (REF "query layer")."""
    ln1 = layer_norm(x, p["ln1_g"], p["ln1_b"], eps)
    x = x + attention(ln1 if query is None else query, ln1, p, mask, num_heads, record)
    ln2 = layer_norm(x, p["ln2_g"], p["ln2_b"], eps)
    return x + _linear(activation(_linear(ln2, p["w_in"], p["b_in"]), act), p["w_out"], p["b_out"])


def forward(params: dict, input_ids, num_heads: int, act: str = "gelu_tanh", eps: float = 1e-5,
            eod_token_id=None, record=None) -> np.ndarray:
    """input_ids [B, S] -> logits [B, S, V] (float64), tied head `out @ wte^T` (REF "output head").

    record: optional list collecting every attention's (scores, probs, mask), see `attention`."""
    input_ids = np.asarray(input_ids)
    pos, mask = positions_and_mask(input_ids, eod_token_id)
    wte = params["wte"].astype(np.float64)
    x = wte[input_ids] + params["wpe"].astype(np.float64)[pos]  # [B, S, H]
    for p in params["blocks"]:
        x = block(x, p, mask, num_heads, act, eps, record=record)
    x = layer_norm(x, params["ln_f_g"], params["ln_f_b"], eps)  # REF: final LN before the query layer
    query = params["wqe"].astype(np.float64)[pos]  # REF: top_query_embedding[position_ids], no LN
    x = block(x, params["query"], mask, num_heads, act, eps, query=query, record=record)
    return x @ wte.T  # no LN after the query layer (REF "final layernorm")


def assert_fp32_logits_match(got, expected, ulps: float = 64) -> None:
    """float32 model logits vs this float64 reference: |Δ| <= ulps · 2^-24 · max|expected|.

    A converter only copies, renames, transposes and splits arrays, so the
    converted model is the reference network exactly; what remains is the
    float32 rounding of the paddle forward. Each logit is the end of a chain
    of reductions (hidden 64..256, FFN 4h, attention over <= 16 positions, 3
    layers, a layer norm per sublayer) whose reordered float32 sums keep about
    24 - log2(n) leading bits of the largest term, so the error stays within
    a few dozen ulp of the largest logit: 64 ulp (measured: 3.7 ulp on the HF
    fixture, 15.5 max logit). A wrong mapping (a transposed, swapped or
    mis-split tensor) moves logits by O(1), six orders above.
    """
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    tol = ulps * 2.0 ** -24 * float(np.abs(expected).max())
    diff = float(np.abs(got - expected).max())
    assert diff <= tol, f"logits differ by {diff:.3e} > {tol:.3e} ({ulps} ulp of max |logit| {np.abs(expected).max():.3f})"
