"""Large-model final save: an mp2 x pp2 job writes final_model/ as per-rank files (nobody holds the whole
model); `pangu reshard` merges them and the merged model scores the trainer's own final validation loss.

Tolerance: the merge only concatenates arrays (bit-exact), so the one-process forward of the merged model
and the trainer's mp2 x pp2 forward on the same batches differ only by float32 summation order: the loss
rule of parity_checks.py, 32 ulp relative."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_checks import LOSS_RTOL  # noqa: E402
from train_case import make_initial_weights, read_metrics, run_launch, write_config  # noqa: E402

pytestmark = pytest.mark.distributed


def test_mp2_pp2_final_model_per_rank_merges_to_the_trained_model(tmp_path):
    from paddle_pangu.convert.reshard import detect_layout, reshard
    from paddle_pangu.training.evaluate import evaluate_model_dir
    from paddle_pangu.training.run_config import load_run_config

    root = str(tmp_path)
    init = make_initial_weights(os.path.join(root, "init.pdparams"))
    out = os.path.join(root, "run")
    layout = {"mp_degree": 2, "pp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 2}
    cfg_path = write_config(os.path.join(root, "run.yaml"), init, out, layout, max_steps=2,
                            checkpoint={"consolidate_max_params": 0})
    run_launch(cfg_path, 4)

    final = os.path.join(out, "final_model")
    mp, pp, files = detect_layout(final)
    assert (mp, pp) == (2, 2) and len(files) == 4
    assert not os.path.exists(os.path.join(final, "model_state.pdparams"))

    merged = os.path.join(root, "merged")
    reshard(final, merged, mp=1, pp=1)
    cfg = load_run_config(cfg_path)
    result = evaluate_model_dir(merged, cfg)
    trainer_eval = read_metrics(out, "eval")[-1]["loss"]
    np.testing.assert_allclose(result["loss"], trainer_eval, rtol=LOSS_RTOL)
