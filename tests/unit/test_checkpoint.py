"""Verified checkpoints: every probe of issue 13 against the real save / verify / load path.

A tiny PanGu model and AdamW are stepped, checkpointed at steps 1 and 2, then a
file of the step-2 checkpoint is damaged; resume must skip step 2 (saying why),
load step 1, and give back exactly step 1's weights and optimizer moments.
"""
import errno
import json
import os

import numpy as np
import paddle
import pytest

from paddle_pangu.config import get_preset
from paddle_pangu.errors import CheckpointError
from paddle_pangu.model import PanGuForCausalLM
from paddle_pangu.training import checkpoint as ckpt
from paddle_pangu.training.checkpoint import rank_state, state_codec
from paddle_pangu.training.optim import build_optimizer, build_scheduler
from paddle_pangu.training.run_config import run_config_from_dict, to_dict

RANK_FILES = ["model.safetensors", "optimizer.safetensors", "state.json", "MANIFEST.json"]
STEP_FILES = ["COMPLETE", "run_config.json"]


def _run_config(**train):
    return run_config_from_dict({"model": {"preset": "tiny"}, "optim": {"lr": 1e-2, "warmup_steps": 0},
                                 "data": {"seq_len": 8, "synthetic": {"num_samples": 8}},
                                 "train": {"max_steps": 5, **train}}, source="test")


class Run:
    """A tiny model + AdamW + schedule that can take steps and checkpoint them."""

    def __init__(self, out_dir, seed=0):
        paddle.seed(seed)
        self.out_dir = str(out_dir)
        self.cfg = _run_config()
        self.model = PanGuForCausalLM(get_preset("tiny", num_layers=2, vocab_size=256, max_position_embeddings=16))
        self.scheduler = build_scheduler(self.cfg.optim, 5)
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.scheduler)

    def step(self, i):
        ids = paddle.to_tensor(np.random.RandomState(i).randint(0, 256, (2, 9)))
        loss = self.model(ids[:, :-1], labels=ids[:, 1:])[0]
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        self.scheduler.step()

    def save(self, step, keep_last=3, run_config=None):
        return ckpt.save_checkpoint(self.out_dir, step, self.model, self.optimizer, self.scheduler,
                                    extra={"consumed_samples": 2 * step}, keep_last=keep_last,
                                    run_config=run_config or to_dict(self.cfg))

    def weights(self):
        return {k: v.numpy().copy() for k, v in self.model.state_dict().items()}

    def moments(self):
        named = rank_state.rename_optimizer_state(self.optimizer.state_dict(),
                                                  rank_state._unique_to_structured(self.model))
        return {k: v.numpy().copy() for k, v in named.items() if isinstance(v, paddle.Tensor)}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A run dir with verified checkpoints at steps 1 and 2, and step 1's weights / moments."""
    run = Run(tmp_path_factory.mktemp("ckpt") / "run")
    run.step(0)
    run.save(1)
    at1 = run.weights(), run.moments()
    run.step(1)
    run.save(2)
    return run.out_dir, at1


@pytest.fixture
def run_dir(two_checkpoints, tmp_path):
    import shutil

    src, at1 = two_checkpoints
    dst = str(tmp_path / "run")
    shutil.copytree(src, dst)
    return dst, at1


def _step_dir(out, step):
    return os.path.join(out, "checkpoints", ckpt.step_dir_name(step))


def _resume(out, run_config=None, force=False):
    fresh = Run(os.path.join(out, "unused"), seed=99)
    step_dir = ckpt.find_resume_dir(out, "auto")
    state = None if step_dir is None else ckpt.load_checkpoint(
        step_dir, fresh.model, fresh.optimizer, fresh.scheduler, run_config=run_config, force=force)
    return step_dir, state, fresh


def _flip(path, nbytes=64):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(min(nbytes, size - size // 2))
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _assert_resumed_step1(out, at1, caplog, culprit):
    with caplog.at_level("WARNING", logger="paddle_pangu.checkpoint"):
        step_dir, state, fresh = _resume(out)
    assert step_dir == _step_dir(out, 1) and state["step"] == 1 and state["extra"] == {"consumed_samples": 2}
    assert "skipping checkpoint" in caplog.text and culprit in caplog.text
    assert os.path.isdir(_step_dir(out, 2) + ".rejected") and not os.path.exists(_step_dir(out, 2))
    weights, moments = at1
    for name, value in fresh.weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    got = fresh.moments()
    assert sorted(got) == sorted(moments) and len(got) > 20
    for name, value in got.items():
        np.testing.assert_array_equal(value, moments[name], err_msg=name)


def test_intact_checkpoint_resumes_newest(run_dir):
    out, _ = run_dir
    step_dir, state, _ = _resume(out)
    assert step_dir == _step_dir(out, 2) and state["step"] == 2
    names = set(os.listdir(os.path.join(step_dir, "rank_00000"))) | set(os.listdir(step_dir))
    assert not any(n.endswith(".pkl") or n.endswith(".pdparams") or n.endswith(".pdopt") for n in names)


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flipped", "truncated"])
@pytest.mark.parametrize("name", RANK_FILES + STEP_FILES)
def test_damaged_file_falls_back_to_previous_checkpoint(run_dir, caplog, name, damage):
    out, at1 = run_dir
    where = _step_dir(out, 2) if name in STEP_FILES else os.path.join(_step_dir(out, 2), "rank_00000")
    damage(os.path.join(where, name))
    _assert_resumed_step1(out, at1, caplog, name if name != "COMPLETE" else "COMPLETE")


def test_missing_file_falls_back(run_dir, caplog):
    out, at1 = run_dir
    os.remove(os.path.join(_step_dir(out, 2), "rank_00000", "optimizer.safetensors"))
    _assert_resumed_step1(out, at1, caplog, "missing")


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage\n", b"step_00000999"], ids=["empty", "garbled", "dangling"])
def test_empty_or_garbled_latest_still_resumes_newest_verified(run_dir, caplog, content):
    out, _ = run_dir
    with open(os.path.join(out, "checkpoints", "latest"), "wb") as f:
        f.write(content)
    with caplog.at_level("WARNING", logger="paddle_pangu.checkpoint"):
        step_dir, state, _ = _resume(out)
    assert step_dir == _step_dir(out, 2) and state["step"] == 2
    assert "latest" in caplog.text


def test_nothing_verifies_starts_fresh_and_says_so(run_dir, caplog):
    out, _ = run_dir
    for step in (1, 2):
        _flip(os.path.join(_step_dir(out, step), "rank_00000", "model.safetensors"))
    with caplog.at_level("WARNING", logger="paddle_pangu.checkpoint"):
        assert ckpt.find_resume_dir(out, "auto") is None
    assert "no checkpoint verified" in caplog.text


def test_explicit_resume_path_missing_or_corrupt_is_a_one_line_error(run_dir):
    out, _ = run_dir
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ckpt.find_resume_dir(out, os.path.join(out, "nope"))
    _flip(os.path.join(_step_dir(out, 2), "rank_00000", "state.json"))
    with pytest.raises(CheckpointError, match="does not verify: .*state.json"):
        ckpt.find_resume_dir(out, _step_dir(out, 2))


def test_disk_full_during_save_removes_partial_dir_and_keeps_previous(run_dir, monkeypatch):
    out, _ = run_dir
    run = Run(out)
    real = rank_state._save_tensors

    def full_disk(path, tensors):
        if path.endswith("optimizer.safetensors"):
            with open(path + ".tmp-x", "wb") as f:
                f.write(b"\0" * 100)  # half written when the disk fills
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, tensors)

    monkeypatch.setattr(rank_state, "_save_tensors", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*partial directory was removed"):
        run.save(3)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000001", "step_00000002"]
    monkeypatch.setattr(rank_state, "_save_tensors", real)
    step_dir, state, _ = _resume(out)
    assert state["step"] == 2
    run.save(3)  # the next save of the same step works
    assert ckpt.find_resume_dir(out, "auto") == _step_dir(out, 3)


def test_partial_dir_of_a_killed_save_is_cleaned_on_start(run_dir):
    out, _ = run_dir
    partial = _step_dir(out, 3) + ".partial"
    os.makedirs(os.path.join(partial, "rank_00000"))
    open(os.path.join(partial, "rank_00000", "model.safetensors"), "wb").close()
    open(os.path.join(out, "checkpoints", "latest.tmp-123"), "w").close()
    assert ckpt.find_resume_dir(out, "auto") == _step_dir(out, 2)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000001", "step_00000002"]


def test_keep_last_keeps_the_new_checkpoint_after_a_fallback(run_dir):
    """Step 2 is corrupt, the run resumes at 1 and saves 2' with keep_last=1: 2' survives, 1 goes."""
    out, _ = run_dir
    _flip(os.path.join(_step_dir(out, 2), "rank_00000", "model.safetensors"))
    step_dir, state, fresh = _resume(out)
    assert state["step"] == 1
    fresh.out_dir = out
    fresh.step(1)
    fresh.save(2, keep_last=1)
    # the rejected step 2 is kept for the user (issue 29), never pruned
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["latest", "step_00000002", "step_00000002.rejected"]
    assert ckpt.find_resume_dir(out, "auto") == _step_dir(out, 2)


def test_changed_run_config_is_refused_with_differences_listed(run_dir, caplog):
    out, _ = run_dir
    changed = to_dict(_run_config(seed=7))
    changed["optim"]["lr"] = 5e-3
    changed["data"]["seq_len"] = 4
    with pytest.raises(CheckpointError) as err:
        _resume(out, run_config=changed)
    msg = str(err.value)
    assert "\n" not in msg and "--force-resume" in msg
    for diff in ("train.seed: 1234 -> 7", "optim.lr: 0.01 -> 0.005", "data.seq_len: 8 -> 4"):
        assert diff in msg
    with caplog.at_level("WARNING", logger="paddle_pangu.checkpoint"):
        _, state, _ = _resume(out, run_config=changed, force=True)
    assert state["step"] == 2 and "--force-resume" in caplog.text


def test_safe_run_config_changes_are_allowed_and_logged(run_dir, caplog):
    out, _ = run_dir
    changed = to_dict(_run_config(max_steps=50, eval_interval=3))
    changed["logging"]["log_interval"] = 1
    with caplog.at_level("WARNING", logger="paddle_pangu.checkpoint"):
        _, state, _ = _resume(out, run_config=changed)
    assert state["step"] == 2
    assert "train.max_steps: 5 -> 50" in caplog.text and "logging.log_interval" in caplog.text


def test_changed_model_shape_is_refused_before_loading(run_dir):
    out, _ = run_dir
    paddle.seed(0)
    other = PanGuForCausalLM(get_preset("tiny", num_layers=2, vocab_size=300, max_position_embeddings=16))
    cfg = _run_config()
    sched = build_scheduler(cfg.optim, 5)
    with pytest.raises(CheckpointError, match=r"model differs from the checkpoint's .*\(256, 64\) -> \(300, 64\)"):
        ckpt.load_checkpoint(_step_dir(out, 2), other, build_optimizer(other, cfg.optim, sched), sched)


def test_state_codec_round_trips_rng_and_tuples():
    paddle.seed(3)
    rng = rank_state.capture_rng_state()
    expected = paddle.rand([4]).numpy()
    doc = json.loads(json.dumps(state_codec.to_json({"rng": rng, "t": (1, 2.5, None), 3: np.float32(1.5)})))
    back = state_codec.from_json(doc)
    assert back["t"] == (1, 2.5, None) and back[3] == np.float32(1.5) and isinstance(back[3], np.float32)
    rank_state.restore_rng_state(back["rng"])
    np.testing.assert_array_equal(paddle.rand([4]).numpy(), expected)
    with pytest.raises(CheckpointError, match="cannot store a object without pickle"):
        state_codec.to_json({"x": object()})
