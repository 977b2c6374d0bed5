"""Resume: stop after k steps, resume, and steps k+1..n equal the uninterrupted run.

2-process runs WITH dropout (so the per-rank RNG states, including fleet's
model-parallel stream, matter) whose AdamW state is split over the ranks
(tensor parallel 2; sharding stage 2):
  A: 6 steps straight through;
  B: the same config, stopped after step 3 (checkpoint written), then
     relaunched with checkpoint.resume=auto to finish steps 4..6.
The losses, grad norms and learning rates of B's steps 1..6 must equal A's
bit for bit, and so must the final weights: same layout, same processes,
same op order, so every float operation is the same one (a tolerance here
could only hide a state that was not restored). B's data order is a pure
function of the step, so nothing else is carried over. Were an RNG not
restored, the resumed steps would draw dropout masks from a re-seeded stream
and differ; were an optimizer moment not reloaded under its renamed key, the
first resumed update would differ. pp2 is the layout whose optimizer-state
keys are renamed between the pipeline's unique parameter names and the
structured names the checkpoint stores.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_case import (  # noqa: E402
    make_initial_weights, read_final_weights, read_metrics, run_launch, write_config,
)

pytestmark = pytest.mark.distributed

DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
LAYOUTS = {
    "mp2": {"mp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 2},  # mp-sharded weights + moments
    "sharding2_stage2": {"sharding_degree": 2, "sharding_stage": 2, "micro_batch_size": 2, "accumulate_steps": 1},
    "pp2": {"pp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 4},  # pipeline optimizer-state renaming
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_continues_the_same_run(layout, tmp_path):
    root = str(tmp_path)
    init = make_initial_weights(os.path.join(root, "init.pdparams"), DROPOUT)
    straight = os.path.join(root, "straight")
    resumed = os.path.join(root, "resumed")
    kwargs = dict(max_steps=6, model_overrides=DROPOUT, checkpoint={"save_interval": 0, "resume": "auto"})
    cfg_a = write_config(os.path.join(root, "a.yaml"), init, straight, LAYOUTS[layout], **kwargs)
    cfg_b = write_config(os.path.join(root, "b.yaml"), init, resumed, LAYOUTS[layout], **kwargs)

    run_launch(cfg_a, 2)
    run_launch(cfg_b, 2, ["--stop-after-steps", "3"])
    first = read_metrics(resumed)
    assert [m["step"] for m in first] == [1, 2, 3]
    assert os.path.isfile(os.path.join(resumed, "checkpoints", "step_00000003", "COMPLETE"))
    assert not os.path.exists(os.path.join(resumed, "final_model"))
    run_launch(cfg_b, 2)

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "lr"):
        assert [m[key] for m in b] == [m[key] for m in a], key
    wa, wb = read_final_weights(straight), read_final_weights(resumed)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        np.testing.assert_array_equal(wb[name], wa[name], err_msg=name)
