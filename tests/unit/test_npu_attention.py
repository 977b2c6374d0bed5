"""The model's Ascend attention branch really runs: `flash_attention_npu` (the simulated npu's test op,
devices/sim_npu/flash_attention.cc, registered under paddle-custom-npu's name and signature) against
the plain attention, on `npu`, in a process that loaded the plugin as `PANGU_TEST_NPU=1` does.

q / k projections are scaled x6 (npu_attention_driver.WEIGHT_SCALE) so scores are tens: a key wrongly
masked or unmasked, or a wrong 1/sqrt(d) scale, moves the logits by tenths (the mutants below show it).

Tolerances. Both paths compute the same function in fp32 with different summation orders; each of
the c = 13 L + 5 stages from embedding to logit (counted in test_npu_amp) is a dot product of at most
H terms, with relative error <= H u (u = 2^-24), so the logits agree within c H u (1 + max|logit|);
gradients go through the chain twice (2 c H u relative to the largest gradient). In bf16 (O1) the
sums stay fp32 (the plugin's kernels) and each stage adds one rounding to u = 2^-8 of its output:
c u (1 + max|logit|).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("npu_attention_driver.py")
LAYERS = 2  # npu_attention_driver


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PANGU_TEST_NPU": "1", "GLOG_minloglevel": "2"}
    env.pop("CUSTOM_DEVICE_ROOT", None)
    proc = subprocess.run([sys.executable, str(DRIVER)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("NPU_ATTN_REPORT ")]
    assert line, proc.stdout[-2000:]
    return json.loads(line[-1].split(" ", 1)[1])


def _bound(u, report, terms=None):
    from paddle_pangu.config import get_preset

    terms = get_preset("tiny").hidden_size if terms is None else terms
    return (13 * LAYERS + 5) * terms * u * (1 + report["logit_max"])


def test_npu_branch_is_selected_and_matches_plain_attention(report):
    assert report["impl"] == "npu"  # parallel.device.fused_attention_available found the registered op
    tol = _bound(2.0 ** -24, report)
    assert report["logit_diff"] <= tol, report
    assert report["grad_names"] == [] and report["grad_rel_diff"] <= 2 * tol / (1 + report["logit_max"]), report


def test_wrong_mask_or_scale_would_be_caught(report):
    tol = _bound(2.0 ** -24, report)
    for name, diff in report["mutant_logit_diff"].items():
        assert diff > 100 * tol, (name, diff, tol)


def test_bf16_npu_attention_within_bf16_rounding(report):
    assert 0 < report["bf16_logit_diff"] <= _bound(2.0 ** -8, report, terms=1), report


def test_training_dropout_grad_regenerates_the_forward_keep_mask(report):
    # central differences with eps 1e-2 of f = sum(out^2) (~10): fp32 noise 48 * 2^-24 * 10 / 2e-2 ~ 1.5e-3,
    # truncation O(eps^2)
    assert report["dropout_zero_fraction"] > 0  # dropout 0.5 really dropped probabilities
    for analytic, numeric in report["dropout_fd"]:
        assert abs(analytic - numeric) <= 5e-3 + 1e-3 * abs(numeric), report["dropout_fd"]


def test_dropout_without_a_fixed_seed_follows_paddles_npu_generator(report):
    """What makes a resume with attention dropout on npu bit-exact: the state a checkpoint saves replays the
    keep masks (the op's own counter from 0 did not)."""
    assert report["rng_replay"] == {"restored_state_replays": True, "reseed_replays": True,
                                    "next_call_differs": True}, report["rng_replay"]
