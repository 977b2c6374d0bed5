"""How far two AdamW runs may drift apart when their gradients differ only by rounding.

Used by the parity tests (test_train_parity.py) to compare final weights with
a per-element bound derived from the optimizer instead of one global atol.

AdamW (paddle's kernel, bias-corrected) moves element i at step t by

    u_t = lr_t * m̂_t / (sqrt(v̂_t) + eps),   m̂_t = Σ_k a_k g_k,   v̂_t = Σ_k b_k g_k²,
    a_k = (1-β1) β1^(t-k) / (1-β1^t),        b_k = (1-β2) β2^(t-k) / (1-β2^t),

after the decoupled decay w *= 1 - lr_t·wd (a contraction: it never grows a
difference). Two facts bound the effect of a gradient perturbation δ_k:

* Hard bound, any gradients: Cauchy-Schwarz gives |m̂_t| <= B_t sqrt(v̂_t) with
  B_t = sqrt(Σ_k a_k² / b_k), so |u_t| <= lr_t B_t and two runs differ by at most
  2 lr_t B_t per step, whatever their gradients (B_1 = 1, B_4 ≈ 1.2 for
  β = (0.9, 0.95)). An element whose gradient is rounding noise (e.g. the key
  bias, analytically zero: softmax ignores a shift of all keys) may differ
  this much, and no more.
* Linear bound, gradients far above the noise: to first order
  |Δm̂_t| <= Σ a_k |δ_k| <= δ and |Δ sqrt(v̂_t)| <= sqrt(Σ b_k δ_k²) <= δ with
  δ = max_k |δ_k| (Σ a_k = Σ b_k = 1), so |Δu_t| <= lr_t (1 + B_t) δ / (sqrt(v̂_t) + eps).
  The amplification is 1/sqrt(v̂_t): the element's own gradient scale, not
  the tensor's. A gradient that cancels to 1e-7 of its tensor's largest
  entry turns a rounding-level δ into a visible fraction of lr (this is the
  word-embedding element [934, 1] of issue 8, see test_train_parity.py).

`element_bound` adds min(hard, 2 x linear) over the steps (the factor 2 covers
the second-order terms of the linearisation) to fp32 rounding of the
weight arithmetic itself.
"""
from __future__ import annotations

import numpy as np

FP32_U = 2.0 ** -24  # unit roundoff of float32


def hard_coefficients(steps: int, beta1: float, beta2: float) -> np.ndarray:
    """B_t for t = 1..steps: |m̂_t| <= B_t sqrt(v̂_t) for any gradient sequence."""
    out = []
    for t in range(1, steps + 1):
        k = np.arange(1, t + 1)
        a = (1 - beta1) * beta1 ** (t - k) / (1 - beta1 ** t)
        b = (1 - beta2) * beta2 ** (t - k) / (1 - beta2 ** t)
        out.append(float(np.sqrt(np.sum(a * a / b))))
    return np.array(out)


def second_moments(grads: list[np.ndarray], beta2: float) -> list[np.ndarray]:
    """sqrt(v̂_t) per step for one tensor from its (clipped) gradient history."""
    v = np.zeros_like(grads[0], dtype=np.float64)
    out = []
    for t, g in enumerate(grads, start=1):
        v = beta2 * v + (1 - beta2) * np.square(g, dtype=np.float64)
        out.append(np.sqrt(v / (1 - beta2 ** t)))
    return out


def element_bound(weight: np.ndarray, grads: list[np.ndarray], deltas: list, lrs: list[float],
                  beta1: float, beta2: float, eps: float) -> np.ndarray:
    """Largest |w_a - w_b| AdamW allows for one tensor after len(grads) steps.

    weight: the reference's final value; grads: the reference's clipped
    gradient per step; deltas: per step, the absolute difference between the
    two runs' clipped gradients (an array like the tensor, or a scalar). A
    step's update uses every gradient so far, so the running maximum of the
    deltas enters. fp32 rounding of the update arithmetic itself (decay,
    moments, sqrt, divide, subtract: < 8 roundings of |w| + |u_t| <= |w| + lr_t B_t)
    is added per step.
    """
    hard = hard_coefficients(len(grads), beta1, beta2)
    w = np.abs(weight.astype(np.float64))
    bound = np.zeros_like(w)
    delta = np.zeros_like(w)
    for t, root_v in enumerate(second_moments(grads, beta2)):
        delta = np.maximum(delta, np.abs(deltas[t]))
        linear = 2 * lrs[t] * (1 + hard[t]) * delta / (root_v + eps)
        bound += np.minimum(2 * lrs[t] * hard[t], linear) + 8 * FP32_U * (w + lrs[t] * hard[t])
    return bound


def adamw_reference(init: np.ndarray, grads: list[np.ndarray], lrs: list[float], beta1: float,
                    beta2: float, eps: float, weight_decay: float) -> np.ndarray:
    """Plain numpy AdamW (float64) over given (already clipped) gradients: the by-hand optimizer."""
    w = init.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        w = w * (1 - lr * weight_decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w = w - lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
    return w
