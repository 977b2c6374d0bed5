"""`pangu train --reshard`: a checkpoint of one layout resumes under another (issue 27, part 2).

Real CPU processes, the tiny model (4 layers), dropout 0 (a resharded run reseeds its RNGs from
train.seed and the step, so it equals the uninterrupted run only without dropout), global batch 4:

* reference runs, 6 steps each with a checkpoint at step 4: one mp2 run (2 processes) and one
  single-process run;
* the mp2 step-4 checkpoint resumed with `--reshard` as one process, and the single-process one
  resumed as mp2: steps 5 and 6 must give the reference run's losses. Step 5's loss is computed
  from the converted weights before any update on the new layout; step 6's loss comes after the
  first update there, which uses the converted AdamW moments and beta powers: zeroed moments
  (the mutation check, through reshard_zero_moments.py) change it well beyond the bound;
* without `--reshard` the same resume is refused in one line naming the flag, exit 2, and
  nothing is written; with it but another global batch (the data position is step x global batch)
  likewise.

The bound is the project's loss rule for two layouts computing the same function in a different
float32 order (parity_checks.py rule 2): 32u relative, u = 2^-24 (a log-sum-exp over the 40k
vocabulary and a mean over 128 tokens: <= log2(40000) u + log2(128) u = 23u for pairwise sums).
At step 5 the weights are bit-equal (the conversion only concatenates / slices) and only the
reduction order differs (mp all-reduce of row-parallel partial sums, vocab-parallel cross
entropy). At step 6 the weights differ by one AdamW update computed from gradients equal up to
that rounding; the same rule holds between mp2 and one process at every step of
test_train_parity.py, where the weights have drifted for several updates.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_checks import LOSS_RTOL  # noqa: E402
from train_case import REPO_ROOT, make_initial_weights, read_metrics, write_config  # noqa: E402

pytestmark = pytest.mark.distributed

MP2 = {"mp_degree": 2, "micro_batch_size": 2, "accumulate_steps": 2}
ONE = {"micro_batch_size": 2, "accumulate_steps": 2}
CKPT = {"save_interval": 4, "keep_last": 2, "resume": "auto", "save_final_model": False}
ZERO_MOMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reshard_zero_moments.py")


def pangu(*args, script=None, expect=0):
    """`pangu ...` as a subprocess (or `script` standing in for the `pangu` entry point)."""
    cmd = [sys.executable, *([script] if script else ["-m", "paddle_pangu.cli"]), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(REPO_ROOT))
    assert proc.returncode == expect, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _config(root, name, parallel, out, **checkpoint):
    init = os.path.join(root, "init.pdparams")
    if not os.path.isfile(init):
        make_initial_weights(init)
    return write_config(os.path.join(root, f"{name}.yaml"), init, out, parallel, max_steps=6,
                        checkpoint={**CKPT, **checkpoint})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two uninterrupted 6-step runs (mp2, one process), each leaving its step-4 checkpoint."""
    root = str(tmp_path_factory.mktemp("reshard"))
    out = {"mp2": os.path.join(root, "mp2"), "one": os.path.join(root, "one")}
    pangu("train", "--config", _config(root, "mp2", MP2, out["mp2"]), "--nproc", 2)
    pangu("train", "--config", _config(root, "one", ONE, out["one"]))
    for run in out.values():
        assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    return root, out


def _step4(run):
    return os.path.join(run, "checkpoints", "step_00000004")


def _losses(out):
    return {m["step"]: m["loss"] for m in read_metrics(out)}


def _assert_continues(resumed, reference, steps=(5, 6)):
    """Steps 5 and 6 (`steps`) of the resumed run give the uninterrupted run's losses (and learning rates)."""
    got, ref = read_metrics(resumed), {m["step"]: m for m in read_metrics(reference)}
    assert [m["step"] for m in got] == list(steps)
    for m in got:
        bound = LOSS_RTOL * abs(ref[m["step"]]["loss"])
        assert abs(m["loss"] - ref[m["step"]]["loss"]) <= bound, (m["step"], m["loss"], ref[m["step"]]["loss"], bound)
        assert m["lr"] == pytest.approx(ref[m["step"]]["lr"], rel=1e-12)


def test_mp2_checkpoint_resumes_as_one_process(runs, tmp_path):
    root, out = runs
    resumed = str(tmp_path / "as_one")
    proc = pangu("train", "--config", os.path.join(root, "one.yaml"), "--output-dir", resumed,
                 "--set", f"checkpoint.resume={_step4(out['mp2'])}", "--reshard")
    assert "resuming step 4 written by dp1 mp2 pp1 sharding1 as dp1 mp1 pp1 sharding1" in proc.stdout, proc.stdout
    _assert_continues(resumed, out["mp2"])


def test_one_process_checkpoint_resumes_as_mp2(runs, tmp_path):
    root, out = runs
    resumed = str(tmp_path / "as_mp2")
    proc = pangu("train", "--config", os.path.join(root, "mp2.yaml"), "--output-dir", resumed, "--nproc", 2,
                 "--set", f"checkpoint.resume={_step4(out['one'])}", "--reshard")
    assert "resuming step 4 written by dp1 mp1 pp1 sharding1 as dp1 mp2 pp1 sharding1" in proc.stdout, proc.stdout
    _assert_continues(resumed, out["one"])


def test_zeroed_moments_are_caught(runs, tmp_path):
    """The mutation: the same resume with the converted AdamW moments zeroed. Step 5 (before any update)
    still matches; step 6 must then miss the reference by more than the bound, or the check above could
    not see moments that did not come through."""
    root, out = runs
    resumed = str(tmp_path / "zeroed")
    pangu("train", "--config", os.path.join(root, "one.yaml"), "--output-dir", resumed,
          "--set", f"checkpoint.resume={_step4(out['mp2'])}", "--reshard", script=ZERO_MOMENTS)
    got, ref = _losses(resumed), _losses(out["mp2"])
    assert abs(got[5] - ref[5]) <= LOSS_RTOL * abs(ref[5])
    assert abs(got[6] - ref[6]) > LOSS_RTOL * abs(ref[6]), (got[6], ref[6])


def _tree_digest(path):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for fn in sorted(filenames):
            with open(os.path.join(dirpath, fn), "rb") as f:
                h.update(f"{os.path.relpath(os.path.join(dirpath, fn), path)}\0".encode() + f.read())
    return h.hexdigest()


def test_layout_change_without_reshard_is_refused_in_one_line(runs, tmp_path):
    root, out = runs
    step4, target = _step4(out["mp2"]), str(tmp_path / "refused")
    before = _tree_digest(os.path.join(out["mp2"], "checkpoints"))
    proc = pangu("train", "--config", os.path.join(root, "one.yaml"), "--output-dir", target,
                 "--set", f"checkpoint.resume={step4}", expect=2)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pangu train: error:")]
    assert len(errors) == 1 and "--reshard" in errors[0] and step4 in errors[0], proc.stdout + proc.stderr
    assert "dp1 mp2 pp1 sharding1" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(target)) in ([], [".pangu.lock"])  # no metrics, checkpoint or model written
    assert _tree_digest(os.path.join(out["mp2"], "checkpoints")) == before  # the checkpoint is untouched


def test_reshard_with_another_global_batch_is_refused_in_one_line(runs, tmp_path):
    """The data position is step x global batch: with --reshard a changed global batch is refused, not guessed."""
    root, out = runs
    step4, target = _step4(out["mp2"]), str(tmp_path / "refused")
    proc = pangu("train", "--config", os.path.join(root, "one.yaml"), "--output-dir", target, "--reshard",
                 "--set", f"checkpoint.resume={step4}", "--set", "parallel.accumulate_steps=1", expect=2)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("pangu train: error:")]
    assert len(errors) == 1 and "global_batch_size 2" in errors[0] and "4" in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(os.listdir(target)) in ([], [".pangu.lock"])



STAGE2 = {"sharding_degree": 2, "sharding_stage": 2, "micro_batch_size": 2, "accumulate_steps": 1}


def test_sharding_stage2_converts_both_ways(runs, tmp_path):
    """Sharding stage 2 (fleet's DygraphShardingOptimizerV2) keeps each rank's AdamW moments as flat 1-D
    slices of fused, padded buffers. One chain, no extra reference run:

    * into stage 2: the one-process step-4 checkpoint resumed with --reshard as a 2-process sharding2
      stage-2 run, each rank cutting its slice of every converted moment by the live optimizer's buffer
      layout (reshard.py `stage2_slice`), checkpointing every step: steps 5 and 6 give the one-process
      run's losses;
    * out of stage 2: that run's step-5 checkpoint (flat slices on both ranks) resumed as one process,
      every moment rebuilt from the slices (reshard.py `unflatten_slices`): step 6, the first update
      on the new layout, uses the rebuilt moments and gives the one-process run's loss.

    Moments that did not come through fail step 6 (zeroed, they missed by 13235u, docs/CHECKPOINTS.md;
    test_zeroed_moments_are_caught keeps that mutation for mp2); tests/unit/test_checkpoint_reshard.py
    checks the slice order and padding."""
    root, out = runs
    stage2 = str(tmp_path / "stage2")
    config = _config(root, "stage2", STAGE2, stage2, save_interval=1)
    proc = pangu("train", "--config", config, "--nproc", 2, "--set", f"checkpoint.resume={_step4(out['one'])}",
                 "--reshard")
    assert "resuming step 4 written by dp1 mp1 pp1 sharding1 as dp1 mp1 pp1 sharding2" in proc.stdout, proc.stdout
    _assert_continues(stage2, out["one"])
    step5 = os.path.join(stage2, "checkpoints", "step_00000005")
    with open(os.path.join(step5, "rank_00001", "state.json"), encoding="utf-8") as f:
        assert json.load(f)["extra"]["coords"]["sharding"] == 1
    resumed = str(tmp_path / "as_one")
    proc = pangu("train", "--config", os.path.join(root, "one.yaml"), "--output-dir", resumed,
                 "--set", f"checkpoint.resume={step5}", "--reshard")
    assert "resuming step 5 written by dp1 mp1 pp1 sharding2 as dp1 mp1 pp1 sharding1" in proc.stdout, proc.stdout
    _assert_continues(resumed, out["one"], steps=[6])
