"""The simulated npu's in-place kernels (paddle_pangu/devices/sim_npu/inplace_kernels.cc, fp32 `multiply` and
`adamw` in kernels.cc; docs/NPU_KERNELS.md "Sharding stage 2"): what sharding stage 2 writes into views of its fused
buffers stays in the buffer, and the fp32 AdamW update on `npu` is bit-identical to the one the CPU run uses.

One subprocess (the plugin must load before paddle) runs every check on `npu` and the same on `cpu` and
prints the results; the assertions are here."""
from __future__ import annotations

import json
import subprocess
import sys

from test_sim_npu import REPO, _env

_PROBE = r"""
import json
import numpy as np
from paddle_pangu import runtime
runtime.apply()
import paddle
from paddle import _C_ops
from paddle_pangu import kernels
from paddle_pangu.training.optim import PanGuAdamW

out = {"views": {}, "adamw": [], "optimizer": {}}
base = np.arange(1, 13, dtype="float32") * 0.37  # a buffer of 12; the view is [4, 10)
src = (np.arange(6, dtype="float32") - 2.5) * 1.7


def grad_view_clear(buf, view):
    # a parameter whose gradient is the view (stage 2's _link_grad_to_buffer), then clear_gradient(True):
    # the fill writes 0 into the view; Paddle's next backward replaces the gradient (fake-empty), so only
    # the clear itself is checked here (the in-place clear of the trainer: test_train_parity npu stage 2)
    p = paddle.create_parameter([2, 3], "float32")
    view.get_tensor()._set_dims([2, 3])
    p._copy_gradient_from(view)
    p.clear_gradient(True)
    view.get_tensor()._set_dims([6])
    return p.grad


def adamw_on_view(buf, view):
    # a parameter stored in the view (stage 2's slice parameter), one AdamW step
    p = paddle.create_parameter([6], "float32")
    view._share_buffer_to(p)
    opt = paddle.optimizer.AdamW(parameters=[p], learning_rate=0.1, weight_decay=0.1)
    (p * p).sum().backward()
    opt.step()
    return p


CASES = {
    "assign": lambda b, v: paddle.assign(paddle.to_tensor(src), v),
    "scale_": lambda b, v: v.scale_(0.5),
    "multiply_": lambda b, v: v.multiply_(paddle.to_tensor(0.3, dtype="float32")),
    "zero_": lambda b, v: v.zero_(),
    "fill_": lambda b, v: v.fill_(2.5),
    "clear_gradient": grad_view_clear,
    "adamw": adamw_on_view,
}
for device in ("npu", "cpu"):
    paddle.set_device(device)
    for name, case in CASES.items():
        with paddle.no_grad() if name not in ("clear_gradient", "adamw") else paddle.enable_grad():
            buf = paddle.to_tensor(base.copy())
            view = buf._slice(4, 10)
            written = case(buf, view)
            shared = [bool(buf._is_shared_buffer_with(view))]
            if isinstance(written, paddle.Tensor):
                shared.append(bool(buf._is_shared_buffer_with(written)))
        got = buf.numpy()
        out["views"].setdefault(name, {})[device] = {
            "shared": all(shared), "buffer": got.tolist(), "changed": bool((got[4:10] != base[4:10]).all()),
            "outside_kept": bool(np.array_equal(got[:4], base[:4]) and np.array_equal(got[10:], base[10:]))}

# one adamw update: the plugin's kernel on npu (Paddle's adamw_ op, as AdamW runs it there) against the
# kernel PanGuAdamW runs on dense fp32 CPU parameters (kernels.adamw_); random data over six decades
rng = np.random.default_rng(23)
for with_decay in (True, False):
    for lr_ratio in (1.0, 0.37):
        for step in (1, 6):
            n = 4099
            p0 = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, n)).astype("float32")
            g0 = (rng.standard_normal(n) * 10.0 ** rng.uniform(-5, 0, n)).astype("float32")
            m10 = (rng.standard_normal(n) * 1e-2).astype("float32")
            m20 = (rng.uniform(0, 1e-3, n) * 10.0 ** rng.uniform(-6, 0, n)).astype("float32")
            b1p, b2p = np.float32(0.9) ** step, np.float32(0.95) ** step
            lr = np.float32(1.7e-3)
            res = {}
            for device in ("npu", "cpu"):
                paddle.set_device(device)
                t = {k: paddle.to_tensor(v) for k, v in dict(p=p0, g=g0, m1=m10, m2=m20,
                                                             b1=np.array([b1p], "float32"),
                                                             b2=np.array([b2p], "float32"),
                                                             lr=np.array([lr], "float32")).items()}
                if device == "npu":
                    _C_ops.adamw_(t["p"], t["g"], t["lr"], t["m1"], t["m2"], None, t["b1"], t["b2"], None, None,
                                  0.9, 0.95, 1e-8, lr_ratio, 0.1, with_decay, False, 1000, False, False, False)
                else:
                    assert kernels.adamw_(t["p"], t["g"], t["lr"], t["m1"], t["m2"], t["b1"], t["b2"], beta1=0.9,
                                          beta2=0.95, epsilon=1e-8, lr_ratio=lr_ratio, coeff=0.1,
                                          with_decay=with_decay), "the CPU kernels did not apply"
                res[device] = {k: t[k].numpy() for k in ("p", "m1", "m2", "b1", "b2")}
            out["adamw"].append({
                "case": [with_decay, lr_ratio, step],
                "equal": {k: bool(np.array_equal(res["npu"][k], res["cpu"][k])) for k in res["cpu"]},
                "moved": int(np.count_nonzero(res["cpu"]["p"] != p0)),
            })

# the optimizer the trainer builds (PanGuAdamW), two steps, a decayed matrix and an undecayed bias
for device in ("npu", "cpu"):
    paddle.set_device(device)
    paddle.seed(5)
    w = paddle.create_parameter([37, 19], "float32", name=f"w_decayed_{device}")
    b = paddle.create_parameter([19], "float32", name=f"b_plain_{device}", is_bias=True)
    x = paddle.to_tensor(np.linspace(-2, 2, 37 * 5, dtype="float32").reshape([5, 37]))
    opt = PanGuAdamW(learning_rate=3e-3, beta1=0.9, beta2=0.95, epsilon=1e-8, weight_decay=0.1,
                     parameters=[w, b], apply_decay_param_fun=lambda name: name.startswith("w_decayed"))
    for _ in range(2):
        ((paddle.matmul(x, w) + b) ** 2).mean().backward()
        opt.step()
        opt.clear_grad()
    out["optimizer"][device] = {"w": w.numpy().tolist(), "b": b.numpy().tolist()}
print("RESULT " + json.dumps(out))
"""


def _run_probe() -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=_env(PANGU_TEST_NPU="1"), capture_output=True,
                          text=True, timeout=900, cwd=str(REPO))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (f"probe failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                                            f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def test_stage2_inplace_ops_write_into_buffer_views_and_adamw_is_bit_identical_to_cpu():
    """On `npu` each op stage 2 runs in place on a view of a fused buffer (assign, scale_, the clip's
    multiply_, zero_ / fill_, clear_gradient's fill, an AdamW step of a parameter stored in the view) keeps the
    view (and what it returns) in the buffer and leaves the buffer exactly as the same op on `cpu` does (exact
    ops: copies, fills, one-rounding products; the AdamW step by the check below).

    AdamW: one update of Paddle's adamw op on `npu` (the plugin's fp32 kernel) equals, bit for bit
    (np.array_equal), the update of `kernels.adamw_`, the AdamW the CPU run uses (PanGuAdamW), on 4099
    random elements spanning six decades, with and without weight decay, lr_ratio 1 and 0.37, at bias
    correction step 1 and 6; and PanGuAdamW itself, two steps on each device, ends at the same weights."""
    out = _run_probe()
    for name, by_device in out["views"].items():
        assert by_device["npu"]["shared"], f"{name} on npu left the fused buffer"
        assert by_device["cpu"]["shared"], f"{name} on cpu left the fused buffer (the probe itself is wrong)"
        assert by_device["npu"]["buffer"] == by_device["cpu"]["buffer"], f"{name}: npu buffer differs from cpu"
        assert by_device["npu"]["changed"] and by_device["npu"]["outside_kept"], f"{name}: {by_device['npu']}"
    for case in out["adamw"]:
        assert case["moved"] > 4000, case  # the update did change the parameters
        assert all(case["equal"].values()), f"npu adamw differs from the CPU run's (with_decay, lr_ratio, step) {case}"
    assert out["optimizer"]["npu"] == out["optimizer"]["cpu"]
