"""Runs inside a process that loaded the simulated npu (tests/unit/test_npu_attention.py starts it).

Prints one JSON object comparing the model's Ascend attention branch (`flash_attention_npu`, the
plugin's test op) with the plain attention on `npu`, on weights scaled so that scores are large, and
the same comparison for a deliberately wrong mask and a wrong scale (what the test must catch).
"""
import json
import os

from paddle_pangu.devices import apply_npu_env, sim_npu

os.environ["CUSTOM_DEVICE_ROOT"] = str(sim_npu.build())  # before paddle is imported, as `pangu` does
apply_npu_env()

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddle_pangu.config import get_preset  # noqa: E402
from paddle_pangu.model import PanGuForCausalLM  # noqa: E402
from paddle_pangu.model import layers, ops  # noqa: E402
from paddle_pangu.parallel.device import fused_attention_available  # noqa: E402

WEIGHT_SCALE = 6.0  # q / k projections x6: scores of tens, so any wrongly (un)masked key or scale shows


def run(model, impl, ids, dtype="float32"):
    layers.set_attention_impl(model, impl)
    model.clear_gradients()
    with paddle.amp.auto_cast(enable=dtype != "float32", dtype=dtype if dtype != "float32" else "bfloat16",
                              level="O1"):
        logits = model(ids)  # [B, S, V]
    loss = logits.astype("float32").square().mean()
    loss.backward()
    grads = {n: p.grad.astype("float32").numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return logits.astype("float32").numpy(), grads


def main():
    paddle.set_device("npu:0")
    report = {"impl": fused_attention_available("npu")}
    paddle.seed(3)
    cfg = get_preset("tiny", num_layers=2, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = PanGuForCausalLM(cfg)
    with paddle.no_grad():
        for block in model.pangu.layers:
            for proj in (block.attention.q_proj, block.attention.k_proj):
                proj.weight.set_value(proj.weight * WEIGHT_SCALE)
    rng = np.random.default_rng(1)
    ids = rng.integers(10, 2000, size=(2, 24))
    ids[0, 7] = ids[1, 15] = cfg.eod_token_id  # document boundaries: PanGu's block-diagonal causal mask
    ids = paddle.to_tensor(ids)
    ref_logits, ref_grads = run(model, "plain", ids)
    npu_logits, npu_grads = run(model, "npu", ids)
    report["logit_max"] = float(np.abs(ref_logits).max())
    report["logit_diff"] = float(np.abs(npu_logits - ref_logits).max())
    # relative to the largest gradient: some are zero in exact arithmetic (k_proj.bias: a key bias adds the
    # same q.b to every score of a row, which softmax cancels), so only rounding noise is left in them
    grad_max = max(float(np.abs(g).max()) for g in ref_grads.values())
    report["grad_rel_diff"] = max(float(np.abs(npu_grads[n] - g).max()) for n, g in ref_grads.items()) / grad_max
    report["grad_names"] = sorted(set(ref_grads) ^ set(npu_grads))

    # mutations: the op called the way a wrong caller would; each must move the logits visibly
    real = ops.npu_flash_attention
    mutants = {
        "causal_only": lambda q, k, v, m, p, t: ops.fleet_compat.run_custom_op(
            "flash_attention_npu", q, k, v, None, None, p, True, False, not t, False)[0],
        "mask_inverted": lambda q, k, v, m, p, t: real(q, k, v, None if m is None else -m - 1e4 * (m == 0), p, t),
        "scaled_twice": lambda q, k, v, m, p, t: real(q * (1.0 / q.shape[-1] ** 0.5), k, v, m, p, t),
    }
    report["mutant_logit_diff"] = {}
    for name, fn in mutants.items():
        ops.npu_flash_attention = fn
        try:
            logits, _ = run(model, "npu", ids)
            report["mutant_logit_diff"][name] = float(np.nan_to_num(np.abs(logits - ref_logits), nan=1e30).max())
        finally:
            ops.npu_flash_attention = real

    # bf16 O1: the op on bf16 q / k / v (one rounding of its output) against plain attention in bf16
    bf_ref, _ = run(model, "plain", ids, "bfloat16")
    bf_npu, _ = run(model, "npu", ids, "bfloat16")
    report["bf16_logit_diff"] = float(np.abs(bf_npu - bf_ref).max())

    # training dropout: the same seed / offset regenerate the keep mask in the grad op (finite-difference check)
    q = paddle.to_tensor(rng.standard_normal((1, 6, 2, 8)).astype("float32"))
    k = paddle.to_tensor(rng.standard_normal((1, 6, 2, 8)).astype("float32"))
    v = paddle.to_tensor(rng.standard_normal((1, 6, 2, 8)).astype("float32"))
    q.stop_gradient = False
    seed_offset = paddle.to_tensor(np.array([5, 0], dtype="int64"))
    out = ops.fleet_compat.run_custom_op("flash_attention_npu", q, k, v, seed_offset, None, 0.5, True,
                                            False, False, False)[0]
    (out * out).sum().backward()
    analytic = q.grad.numpy().copy()
    eps, numeric = 1e-2, np.zeros_like(analytic)
    base = q.numpy()
    for idx in [(0, 1, 0, 3), (0, 4, 1, 0), (0, 5, 0, 7)]:
        for sign in (1, -1):
            qq = base.copy()
            qq[idx] += sign * eps
            o = ops.fleet_compat.run_custom_op("flash_attention_npu", paddle.to_tensor(qq), k, v, seed_offset,
                                                  None, 0.5, True, False, False, False)[0].numpy()
            numeric[idx] += sign * float((o.astype("float64") ** 2).sum()) / (2 * eps)
    report["dropout_fd"] = [[float(analytic[i]), float(numeric[i])]
                            for i in [(0, 1, 0, 3), (0, 4, 1, 0), (0, 5, 0, 7)]]
    report["dropout_zero_fraction"] = float((out.numpy() == 0).mean())

    # without fixed_seed_offset the keep mask comes from Paddle's npu generator: paddle.seed fixes it and
    # get_rng_state / set_rng_state (what a checkpoint saves and a resume restores) replay it
    def dropped():
        return ops.fleet_compat.run_custom_op("flash_attention_npu", q, k, v, None, None, 0.5, False, False, False,
                                              False)[0].numpy()

    paddle.seed(11)
    first = dropped()
    state = paddle.get_rng_state()
    second = dropped()
    paddle.set_rng_state(state)
    replayed = dropped()
    paddle.seed(11)
    reseeded = dropped()
    report["rng_replay"] = {"restored_state_replays": bool(np.array_equal(second, replayed)),
                            "reseed_replays": bool(np.array_equal(first, reseeded)),
                            "next_call_differs": not bool(np.array_equal(first, second))}
    print("NPU_ATTN_REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
