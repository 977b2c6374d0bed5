"""Training parity: every parallel layout reproduces the single-process run.

Same initial weights, same synthetic batches (global batch 4, seq 32), 4
AdamW steps with warmup/cosine and grad clipping. For each layout the loss
and grad-norm curves, the final validation loss and the final consolidated
weights must match one process trained with the same global batch. The
reference runs in the same test session (nothing is hard-coded).
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import DistributedRunError  # noqa: E402
from train_case import (  # noqa: E402
    make_initial_weights, read_final_weights, read_metrics, run_launch, run_single, write_config,
)

pytestmark = pytest.mark.distributed

# layout name -> (processes, parallel section); every layout has global batch 4
LAYOUTS = {
    "dp2": (2, {"dp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 1}),
    "mp2_recompute": (2, {"mp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 2, "recompute_interval": 1}),
    "pp2_4micro": (2, {"pp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 4}),
    "sharding2_stage1": (2, {"sharding_degree": 2, "sharding_stage": 1, "micro_batch_size": 2, "accumulate_steps": 1}),
    "sharding2_stage2_acc2": (2, {"sharding_degree": 2, "sharding_stage": 2, "micro_batch_size": 1,
                                  "accumulate_steps": 2}),
    "mp2_pp2": (4, {"mp_degree": 2, "pp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 4}),
    "dp2_mp2": (4, {"dp_degree": 2, "mp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 2}),
    # the paper's 2.6B / 13B layout in miniature: tensor parallel + optimizer sharding + recompute
    "mp2_sharding2_recompute": (4, {"mp_degree": 2, "sharding_degree": 2, "micro_batch_size": 2,
                                    "accumulate_steps": 1, "recompute_interval": 1}),
}
REFERENCE = {"micro_batch_size": 2, "accumulate_steps": 2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_parity")
    return str(root), make_initial_weights(str(root / "init.pdparams"))


@pytest.fixture(scope="module")
def reference(workdir):
    root, init = workdir
    out = os.path.join(root, "single")
    run_single(write_config(os.path.join(root, "single.yaml"), init, out, REFERENCE))
    return read_metrics(out), read_metrics(out, "eval"), read_final_weights(out)


def _assert_same_run(out, reference, weight_atol=2e-5):
    train, evals, weights = reference
    got = read_metrics(out)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in train], rtol=2e-6)
    np.testing.assert_allclose([m["grad_norm"] for m in got], [m["grad_norm"] for m in train], rtol=2e-4)
    np.testing.assert_allclose([m["lr"] for m in got], [m["lr"] for m in train], rtol=1e-12)
    np.testing.assert_allclose(read_metrics(out, "eval")[-1]["loss"], evals[-1]["loss"], rtol=2e-6)
    final = read_final_weights(out)
    assert sorted(final) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_allclose(final[name], value, rtol=0, atol=weight_atol, err_msg=name)


def test_reference_learns_and_clips(reference):
    train, _, weights = reference
    assert train[-1]["loss"] < train[0]["loss"]  # the synthetic run does learn
    assert all(m["grad_norm"] > 0 for m in train)
    assert "pangu.query_layer.top_query_embedding.weight" in weights


def test_recompute_matches_single_process(workdir, reference):
    root, init = workdir
    out = os.path.join(root, "recompute")
    run_single(write_config(os.path.join(root, "recompute.yaml"), init, out, {**REFERENCE, "recompute_interval": 1}))
    _assert_same_run(out, reference)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name, workdir, reference):
    root, init = workdir
    nproc, parallel = LAYOUTS[name]
    out = os.path.join(root, name)
    run_launch(write_config(os.path.join(root, f"{name}.yaml"), init, out, parallel), nproc, timeout=400)
    _assert_same_run(out, reference)


def test_bad_layout_rejected_at_launch_before_collectives(workdir):
    """Launched on 2 processes, an impossible layout exits with its message and no process group.

    (Every other invalid layout goes through the same `RunConfig.validate` call
    first thing in `pangu train`; tests/unit/test_run_config.py checks each message.)
    """
    root, init = workdir
    out = os.path.join(root, "bad")
    config = write_config(os.path.join(root, "bad.yaml"), init, out, {"mp_degree": 4, "micro_batch_size": 2})
    message = "world_size=2"
    with pytest.raises(DistributedRunError) as excinfo:
        run_launch(config, 2, timeout=120)
    report = str(excinfo.value)
    assert message in report
    assert "HybridParallelInfo" not in report and "comm group(s) create" not in report  # fleet.init never ran
    assert not os.path.exists(out)
