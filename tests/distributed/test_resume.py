"""Resume: stop after k steps, resume, and steps k+1..n equal the uninterrupted run.

2-process runs WITH dropout (so the per-rank RNG states, including fleet's
model-parallel stream, matter) whose AdamW state is split over the ranks
(tensor parallel 2; sharding stage 2):
  A: 6 steps straight through, writing a checkpoint after step 3 on the way
     (so saving must not disturb the run either);
  B: a new output_dir resuming from A's step-3 checkpoint
     (checkpoint.resume=<path>) to finish steps 4..6.
One launch fewer than stopping a second run after step 3 and resuming it: the
state B resumes is the same bytes (the early stop itself, --stop-after-steps
with checkpoint.resume=auto, is tested in tests/unit/test_checkpoint_cli.py,
and killed runs resuming by `auto` in test_kill_resume.py).
The losses, grad norms and learning rates of B's steps 4..6 must equal A's
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
    step3 = os.path.join(straight, "checkpoints", "step_00000003")
    kwargs = dict(max_steps=6, model_overrides=DROPOUT)
    cfg_a = write_config(os.path.join(root, "a.yaml"), init, straight, LAYOUTS[layout],
                         checkpoint={"save_interval": 3, "keep_last": 2, "resume": "auto"}, **kwargs)
    cfg_b = write_config(os.path.join(root, "b.yaml"), init, resumed, LAYOUTS[layout],
                         checkpoint={"save_interval": 3, "keep_last": 2, "resume": step3}, **kwargs)

    run_launch(cfg_a, 2)
    assert os.path.isfile(os.path.join(step3, "COMPLETE"))
    run_launch(cfg_b, 2)

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in a] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in b] == [4, 5, 6]  # resumed at step 3, not from the start
    for key in ("loss", "grad_norm", "lr"):
        assert [m[key] for m in b] == [m[key] for m in a[3:]], key
    wa, wb = read_final_weights(straight), read_final_weights(resumed)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        np.testing.assert_array_equal(wb[name], wa[name], err_msg=name)
