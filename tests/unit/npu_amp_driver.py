"""Runs inside a process that loaded the simulated npu (tests/unit/test_npu_amp.py starts it).

Prints one JSON object: the per-step losses of fp32 / bf16 O1 / bf16 O2 / fp16 O2 runs of the real
Trainer on `npu`, the first-step rounding bound of each AMP mode computed from the fp32 model, the
plugin matmul checked against the fp32 matmul of the rounded operands, and an fp16 run with a
planted gradient overflow, checkpointed and resumed.
"""
import json
import os
import sys

from paddle_pangu.devices import apply_npu_env, sim_npu

os.environ["CUSTOM_DEVICE_ROOT"] = str(sim_npu.build())  # before paddle is imported, as `pangu` does
apply_npu_env()

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from paddle_pangu.training.run_config import run_config_from_dict  # noqa: E402
from paddle_pangu.training.trainer import Trainer  # noqa: E402

UNIT_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}  # half an ulp at 1: 8 / 11 significand bits
STEPS = 3


def config(out_dir, dtype="float32", level="O1", init_loss_scale=1024.0, save_interval=0):
    return run_config_from_dict(config_dict(out_dir, dtype, level, init_loss_scale, save_interval),
                                source="npu_amp_driver")


def config_dict(out_dir, dtype="float32", level="O1", init_loss_scale=1024.0, save_interval=0):
    return {
        "model": {"preset": "tiny", "overrides": {"num_layers": 2, "max_position_embeddings": 32,
                                                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        "data": {"seq_len": 32, "synthetic": {"num_samples": 32, "vocab_size": 2000, "eod_every": 13}},
        "optim": {"lr": 2.0e-3, "warmup_steps": 0, "decay_style": "constant", "grad_clip": 0.0},
        "parallel": {"micro_batch_size": 2, "accumulate_steps": 1},
        "amp": {"dtype": dtype, "level": level, "init_loss_scale": init_loss_scale},
        "train": {"max_steps": STEPS, "seed": 5, "output_dir": str(out_dir), "eval_iters": 1, "device": "npu"},
        "checkpoint": {"save_interval": save_interval, "keep_last": 5, "save_final_model": False},
        "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
    }


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if row["type"] == "train"]


def first_step_sensitivity(trainer):
    """mean over tokens of sum_v |p_v - y_v| * (|h| . |E_v|) for the first batch, fp32 model.

    |h| . |E_v| = sum_k |h_k| |E_vk| bounds how far rounding the factors of a logit's products can move
    it (Higham's dot-product bound); |p - y| is dLoss/dlogit of the token's cross entropy.
    """
    tokens, labels = trainer._to_tensors(trainer.train_batches.batch(0))
    model = trainer.model
    with paddle.no_grad():
        hidden = model.pangu(tokens)  # [B, S, H] after the final layer norm
        emb = model.pangu.embeddings.word_embeddings.weight  # [V, H]
        logits = paddle.matmul(hidden, emb, transpose_y=True)  # [B, S, V]
        probs = paddle.nn.functional.softmax(logits, axis=-1)
        onehot = paddle.nn.functional.one_hot(labels, logits.shape[-1])
        scale = paddle.matmul(hidden.abs(), emb.abs(), transpose_y=True)  # [B, S, V]
        return float(((probs - onehot).abs() * scale).sum(-1).mean())


def check_matmul(dtype):
    """The plugin's matmul / matmul_grad against fp32 math on the same rounded operands, rounded once."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for xs, ys, tx, ty in [([3, 5, 7], [7, 4], False, False), ([2, 3, 7, 5], [2, 3, 4, 7], True, True), ([2, 6, 7], [1, 4, 7], False, True),
                           ([6, 7], [1, 4, 7], False, True)]:
        x = paddle.to_tensor(rng.standard_normal(xs).astype("float32") * 4).astype(dtype)
        y = paddle.to_tensor(rng.standard_normal(ys).astype("float32") * 4).astype(dtype)
        x.stop_gradient = y.stop_gradient = False
        out = paddle.matmul(x, y, tx, ty)
        g = paddle.to_tensor(rng.standard_normal(out.shape).astype("float32")).astype(dtype)
        dx, dy = paddle.grad([out], [x, y], [g])
        # the reference: Paddle's own fp32 CPU matmul of the exactly widened operands
        xf, yf, gf = (paddle.to_tensor(t.astype("float32").numpy(), place=paddle.CPUPlace()) for t in (x, y, g))
        for t in (xf, yf):
            t.stop_gradient = False
        ref = paddle.matmul(xf, yf, tx, ty)
        rdx, rdy = paddle.grad([ref], [xf, yf], [gf])
        for got, want in ((out, ref), (dx, rdx), (dy, rdy)):
            got, want = got.astype("float32").numpy(), want.numpy()
            # one rounding: |got - want| <= u |want|, plus fp32 summation-order slack (2^-20 relative)
            excess = np.abs(got - want) - (UNIT_ROUNDOFF[dtype] + 2.0 ** -20) * np.abs(want)
            worst = max(worst, float(excess.max()))
    return worst


def overflow(work):
    """fp16 O2, checkpoint every step, and every gradient of step 2 made inf, as an fp16 overflow would."""
    out = os.path.join(work, "overflow")
    trainer = Trainer(config(out, "float16", "O2", init_loss_scale=1024.0, save_interval=1))
    seen = {}

    def plant(grad):
        return grad + float("inf") if trainer.step + 1 == 2 else grad

    def hook(layer, inputs, output):
        seen.setdefault(trainer.step + 1, float(trainer.scaler._scale))  # the scale this step starts with
        output.register_hook(plant)
        return output

    trainer.model.pangu.embeddings.register_forward_post_hook(hook)
    trainer.train(stop_after=2)
    with open(os.path.join(work, "overflow.yaml"), "w") as f:  # the same run, for `pangu train` to resume
        json.dump(config_dict(out, "float16", "O2", init_loss_scale=1024.0, save_interval=1), f)
    print("NPU_AMP_REPORT " + json.dumps({"scale_at_step_start": seen, "scale_after": float(trainer.scaler._scale)}))


def main(work):
    paddle.set_device("npu:0")
    report = {"device": str(paddle.get_device()), "matmul_excess": {d: check_matmul(d) for d in UNIT_ROUNDOFF}}
    ref = Trainer(config(os.path.join(work, "fp32")))
    report["sensitivity"] = first_step_sensitivity(ref)
    from paddle_pangu.model.layers import PanGuAttention

    report["attention_impl"] = sorted({m.impl for m in ref.model.sublayers() if isinstance(m, PanGuAttention)})
    ref.train()
    report["fp32"] = losses(os.path.join(work, "fp32"))
    for dtype, level in (("bfloat16", "O1"), ("bfloat16", "O2"), ("float16", "O2")):
        name = f"{dtype}_{level}"
        trainer = Trainer(config(os.path.join(work, name), dtype, level))
        params = trainer.model.parameters()
        report[name] = {"losses": None, "param_dtypes": sorted({str(p.dtype) for p in params})}
        trainer.train()
        report[name]["losses"] = losses(os.path.join(work, name))

    print("NPU_AMP_REPORT " + json.dumps(report))


if __name__ == "__main__":
    (overflow if sys.argv[1] == "overflow" else main)(sys.argv[2])
