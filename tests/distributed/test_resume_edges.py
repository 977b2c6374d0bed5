"""Resume edge cases: an explicit `checkpoint.resume=PATH`, and a checkpoint from another world size.

(Empty or garbled `latest` files and corrupted checkpoints are tested with the
verified-checkpoint code, tests/unit/test_checkpoint*.py.)

Rule for the explicit resume: same layout, same process count, same op order
as the run that wrote the checkpoint, so every float operation of steps 3..4
is the same one: losses, grad norms and final weights must be bit-identical,
not merely close.
"""
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import DistributedRunError  # noqa: E402
from train_case import (  # noqa: E402
    make_initial_weights, read_final_weights, read_metrics, run_launch, run_single, write_config,
)

SINGLE = {"micro_batch_size": 2, "accumulate_steps": 2}
DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}  # the RNG state matters too


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One process, 4 steps, a checkpoint every 2 steps (step_00000002 and step_00000004 kept)."""
    root = str(tmp_path_factory.mktemp("resume_edges"))
    init = make_initial_weights(os.path.join(root, "init.pdparams"), DROPOUT)
    out = os.path.join(root, "run")
    cfg = write_config(os.path.join(root, "run.yaml"), init, out, SINGLE, max_steps=4, model_overrides=DROPOUT,
                       checkpoint={"save_interval": 2, "keep_last": 2})
    run_single(cfg)
    return root, init, out, cfg


def test_explicit_resume_path_beats_latest_and_reproduces_the_run(saved_run):
    root, _, out, cfg = saved_run
    ckpt = os.path.join(out, "checkpoints")
    assert open(os.path.join(ckpt, "latest")).read().strip() == "step_00000004"
    first = read_metrics(out)
    straight = read_final_weights(out)
    shutil.move(os.path.join(out, "final_model"), os.path.join(root, "final_straight"))
    older = os.path.join(ckpt, "step_00000002")
    run_single(cfg, ["--set", f"checkpoint.resume={older}"])  # not `latest` (step 4): the older one, as asked
    rows = read_metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 3, 4]  # steps 3..4 ran again from step 2
    for key in ("loss", "grad_norm", "lr"):
        assert [m[key] for m in rows[4:]] == [m[key] for m in first[2:]], key
    resumed = read_final_weights(out)
    for name, value in straight.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


@pytest.mark.distributed
def test_checkpoint_of_another_world_size_is_refused_in_one_line(saved_run):
    """A 1-process checkpoint resumed by 2 processes: refused before training, one error line, no traceback."""
    root, init, out, _ = saved_run
    step = os.path.join(out, "checkpoints", "step_00000002")
    cfg = write_config(os.path.join(root, "dp2.yaml"), init, os.path.join(root, "dp2"),
                       {"dp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 2}, max_steps=4,
                       model_overrides=DROPOUT, checkpoint={"resume": step})
    with pytest.raises(DistributedRunError) as err:
        run_launch(cfg, 2, timeout=240)
    report = str(err.value)
    lines = [line for line in report.splitlines() if "pangu train: error:" in line]
    assert lines, report[-3000:]
    assert "step_00000002" in lines[0] and "saved by 1 process" in lines[0] and "resuming with 2" in lines[0]
    assert "--reshard" in lines[0]  # the refusal names the flag that converts the checkpoint
    assert "Traceback" not in report
    assert not os.path.exists(os.path.join(root, "dp2", "metrics.jsonl"))  # no step was trained
