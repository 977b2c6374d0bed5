"""Tensor-parallel inference pieces in one process (issue 27 part 1; the 2-process runs are in
tests/distributed/test_tensor_parallel_inference.py): what a rank reads from a full directory, that the
test model notices a wrong split, and what `--nproc` refuses before launching anything."""
from __future__ import annotations

import numpy as np
import pytest

from paddle_pangu.cli import main
from paddle_pangu.model.weight_tables import merge_state_dicts, split_state_dict


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
    from tp_case import tp_model

    return tp_model(tmp_path_factory.mktemp("tp"))


def _full_state(path):
    from paddle_pangu.io.weights import read_weight_files

    return {k: t.load() for k, t in read_weight_files(path).items()}


def test_a_rank_reads_exactly_its_weight_table_slice_of_a_full_directory(dirs):
    from paddle_pangu.config import get_preset
    from paddle_pangu.convert.common import open_model_config
    from paddle_pangu.inference.tensor_parallel import _rank_weights_of_full_dir

    full = _full_state(dirs[0])
    config = open_model_config(dirs[0])
    parts = [_rank_weights_of_full_dir(dirs[0], config, 2, r) for r in range(2)]
    for r, part in enumerate(parts):
        want = split_state_dict(full, 2, r)
        assert set(part) == set(want)
        for name in want:
            np.testing.assert_array_equal(part[name], want[name], err_msg=name)
    assert parts[0]["pangu.layers.0.attention.q_proj.weight"].shape == (64, 32)  # [H, H/2]: column split
    assert parts[1]["pangu.layers.0.mlp.fc_out.weight"].shape == (128, 64)  # [F/2, H]: row split
    merged = merge_state_dicts(parts)
    assert all(np.array_equal(merged[k], full[k]) for k in full)
    assert get_preset("tiny").num_attention_heads == 4


@pytest.mark.parametrize("name", ["pangu.layers.0.attention.q_proj.weight", "pangu.layers.1.attention.v_proj.weight",
                                  "pangu.layers.0.mlp.fc_in.weight", "pangu.layers.1.mlp.fc_out.weight",
                                  "pangu.query_layer.attention.out_proj.weight"])
def test_the_test_model_notices_a_swapped_rank_slice(dirs, name):
    """Mutation check of the 2-process tests: the model loaded with rank 1's slice of one column- or
    row-parallel weight where rank 0's belongs (what a wrong split gives) prints other greedy tokens."""
    from paddle_pangu.inference import generate_text
    from paddle_pangu.inference.loading import load_model_and_tokenizer
    from paddle_pangu.model import PanGuForCausalLM

    from tp_case import PROMPTS

    model, tok = load_model_and_tokenizer(dirs[0])
    full = _full_state(dirs[0])
    shards = [split_state_dict({name: full[name]}, 2, r) for r in range(2)]
    swapped = dict(full, **merge_state_dicts([shards[1], shards[0]]))
    wrong = PanGuForCausalLM(model.config)
    wrong.set_state_dict(swapped)
    wrong.eval()
    assert generate_text(wrong, tok, PROMPTS, max_new_tokens=12) != generate_text(model, tok, PROMPTS, max_new_tokens=12)


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pangu ")]
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    return err[0]


def test_nproc_refusals_are_one_line_before_anything_is_launched(dirs, capsys):
    line = _one_line_error(capsys, ["generate", "--model", dirs[1], "--prompt", "x", "--nproc", "4"],
                           "pangu generate: error:", "mp2 pp1", "--nproc 4", "pangu reshard", "--mp 4")
    assert dirs[1] in line
    _one_line_error(capsys, ["serve", "--model", dirs[0], "--nproc", "2", "--weights", "int8"],
                    "pangu serve: error:", "--weights int8", "--nproc 2")
    _one_line_error(capsys, ["generate", "--model", dirs[0], "--prompt", "x", "--nproc", "3"],
                    "pangu generate: error:", "divisible", "3")
    _one_line_error(capsys, ["evaluate", "--model", dirs[0], "--task", "reviews", "--nproc", "0"],
                    "pangu evaluate: error:", "--nproc must be >= 1")


def test_launch_flags_are_not_passed_to_the_ranks():
    from paddle_pangu.training.launch import strip_launch_flags

    argv = ["--model", "m", "--nproc", "2", "--prompt", "a", "--launch-logs=/tmp/x", "--nproc=2", "--seed", "3"]
    assert strip_launch_flags(argv) == ["--model", "m", "--prompt", "a", "--seed", "3"]


class _Recorder:
    """A Channel stand-in: rank 0's side records each message, a follower's side replays them."""

    def __init__(self):
        import threading

        self.lock, self.sent = threading.RLock(), []

    def start_heartbeat(self):
        return self

    def send(self, op, args=None, arrays=None, free=None):
        import json

        self.sent.append((op, json.loads(json.dumps(args or {})), {k: np.array(v) for k, v in (arrays or {}).items()},
                          list(free or [])))

    def close(self, free=None):
        self.send("stop", free=free)

    def recv(self):
        return self.sent.pop(0)


def test_followers_mirror_the_kv_cache_through_rows_joining_and_leaving(tiny_model):
    """The step protocol with continuous batching (rows join a running batch, leave at different steps): a
    follower replaying rank 0's messages on its own stepper holds, under each id rank 0 still uses, the
    same cache as rank 0, and has dropped the ones rank 0 dropped."""
    import gc

    from paddle_pangu.inference.decoding import BatchDecoder, Row
    from paddle_pangu.inference.generation import DygraphStepper
    from paddle_pangu.inference.sampling import SamplingConfig
    from paddle_pangu.inference.tensor_parallel import LeaderStepper, follow

    channel = _Recorder()
    leader = LeaderStepper(DygraphStepper(tiny_model), channel)
    decoder = BatchDecoder(leader, tiny_model.config)
    cfg = lambda n: SamplingConfig(max_new_tokens=n, eos_token_id=-1, pad_token_id=tiny_model.config.pad_token_id)  # noqa: E731
    decoder.add([Row([5, 6, 7, 8, 9], cfg(6))])
    decoder.step()
    decoder.step()
    decoder.add([Row([11, 12], cfg(2)), Row(list(range(13, 22)), cfg(5))])  # pad_left + concat
    ops_before_leave = {m[0] for m in channel.sent}
    decoder.step()
    decoder.step()
    decoder.step()  # the 2-token row has left: select (+ trim_left of the columns nobody attends to)
    gc.collect()
    decoder.step()  # carries the ids rank 0 dropped
    live = decoder.cache
    leader.close()
    ops = [m[0] for m in channel.sent]
    assert {"step", "pad_left", "concat"} <= ops_before_leave and "select" in ops and ops[-1] == "stop"
    assert any(m[3] for m in channel.sent)  # dropped handles were announced
    caches = {}
    assert follow(tiny_model, DygraphStepper(tiny_model), channel, caches=caches, watch=False) == len(ops) - 1
    assert live.id in caches and len(caches) <= 3  # the live cache and at most the last step's inputs
    for (k0, v0), (k1, v1) in zip(live.local, caches[live.id]):
        np.testing.assert_array_equal(k1.numpy(), k0.numpy())
        np.testing.assert_array_equal(v1.numpy(), v0.numpy())
