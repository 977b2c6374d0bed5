"""Mixed precision on the simulated `npu` (paddle_pangu/devices/sim_npu): bf16 O1 / O2 and fp16 O2
with dynamic loss scaling train the tiny model through the real Trainer and `pangu train`, in
processes that load the plugin the way `PANGU_TEST_NPU=1` does.

The bound on the AMP losses (REF "Training recipe": fp16 matmuls, fp32 layernorm / softmax / loss).
The plugin's kernels compute in fp32 and round once (kernels.cc), so an AMP forward differs from the
fp32 one only by roundings to the half type, each a relative error of at most u (bf16 u = 2^-8,
fp16 u = 2^-11) of the value rounded. A logit z_v = h . E_v (the tied head) whose inputs carry such
relative errors moves by at most c * u * sum_k |h_k| |E_vk| to first order (Higham's dot-product bound),
where c counts the roundings on the path from the embedding to the logit: per layer the layer-norm
output cast, the q / k / v operands, the scores, the probabilities, the context, the out-projection,
the residual add, the second layer-norm cast, fc_in, gelu, fc_out and its residual add (13), plus the
embedding lookup and sum (2) and the head's operands and output (3): c = 13 L + 5. The token's loss
moves by sum_v |p_v - y_v| |dz_v| (dLoss/dz = p - y). So at step 1, where the weights are still the
same, |loss_amp - loss_fp32| <= c * u * S with S = mean_tokens sum_v |p_v - y_v| (|h| . |E_v|),
computed from the fp32 model on the first batch (npu_amp_driver.first_step_sensitivity); a factor 2
covers the second-order terms. Later steps also carry the different updates, so they are held to the
step-1 bound grown by one such bound per step (the loss of each step is a new forward on weights that
moved by AdamW steps of size lr whichever precision computed them).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("npu_amp_driver.py")
U = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
LAYERS = 2  # npu_amp_driver.config


def _env():
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PANGU_TEST_NPU": "1", "GLOG_minloglevel": "2"}
    env.pop("CUSTOM_DEVICE_ROOT", None)
    return env


def _run_driver(mode, work):
    proc = subprocess.run([sys.executable, str(DRIVER), mode, str(work)], capture_output=True, text=True,
                          env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("NPU_AMP_REPORT ")]
    assert line, proc.stdout[-2000:]
    return json.loads(line[-1].split(" ", 1)[1])


@pytest.fixture(scope="module")
def amp_report(tmp_path_factory):
    return _run_driver("amp", tmp_path_factory.mktemp("npu_amp"))


def test_plugin_matmul_is_the_fp32_matmul_of_the_rounded_operands_rounded_once(amp_report):
    assert amp_report["device"] == "npu:0"
    assert amp_report["attention_impl"] == ["npu"]  # the Trainer runs the Ascend attention op on npu
    # excess over u |ref| (+ fp32 summation-order slack) of out, dx, dy on transposed / broadcast shapes
    assert amp_report["matmul_excess"]["bfloat16"] <= 0 and amp_report["matmul_excess"]["float16"] <= 0


@pytest.mark.parametrize("mode", ["bfloat16_O1", "bfloat16_O2", "float16_O2"])
def test_amp_losses_on_npu_within_the_rounding_bound_of_the_fp32_run(amp_report, mode):
    dtype, level = mode.split("_")
    run = amp_report[mode]
    fp32 = np.array(amp_report["fp32"])
    amp = np.array(run["losses"])
    assert len(amp) == len(fp32) == 3 and np.isfinite(amp).all()
    step1 = 2 * (13 * LAYERS + 5) * U[dtype] * amp_report["sensitivity"]
    bounds = step1 * np.arange(1, len(fp32) + 1)
    assert (np.abs(amp - fp32) <= bounds).all(), (amp, fp32, bounds)
    assert not np.array_equal(amp, fp32), "AMP changed nothing: the run did not compute in half precision"
    # O2 keeps half-precision parameters (layer norms stay fp32) with fp32 master weights in AdamW
    half = {"bfloat16": "paddle.bfloat16", "float16": "paddle.float16"}[dtype]
    assert (half in run["param_dtypes"]) == (level == "O2"), run["param_dtypes"]


def _safetensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_fp16_overflow_step_is_skipped_scale_halves_and_resume_keeps_the_scale(tmp_path):
    report = _run_driver("overflow", tmp_path)
    # step 2's gradients were inf: the scale it started with (1024) is halved after it
    assert report["scale_at_step_start"] == {"1": 1024.0, "2": 1024.0} and report["scale_after"] == 512.0
    ckpts = tmp_path / "overflow" / "checkpoints"
    w1 = _safetensors(ckpts / "step_00000001" / "rank_00000" / "model.safetensors")
    w2 = _safetensors(ckpts / "step_00000002" / "rank_00000" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1), "step 2 was not skipped"
    state2 = json.loads((ckpts / "step_00000002" / "rank_00000" / "state.json").read_text())
    assert state2["scaler"]["scale"]["__ndarray__"] == [512.0]
    # the user resumes with `pangu train`: step 3 starts from the saved (halved) scale, trains, and
    # its clean step leaves the scale where it was (it doubles only after 1000 clean steps)
    proc = subprocess.run([sys.executable, "-m", "paddle_pangu.cli", "train", "--config",
                           str(tmp_path / "overflow.yaml")], capture_output=True, text=True, env=_env(),
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state3 = json.loads((ckpts / "step_00000003" / "rank_00000" / "state.json").read_text())
    assert state3["scaler"]["scale"]["__ndarray__"] == [512.0], state3["scaler"]
    rows = [json.loads(line) for line in (tmp_path / "overflow" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3] and "nonfinite" not in steps[2]
    w3 = _safetensors(ckpts / "step_00000003" / "rank_00000" / "model.safetensors")
    assert any(not np.array_equal(w2[k], w3[k]) for k in w2), "the resumed step did not train"
