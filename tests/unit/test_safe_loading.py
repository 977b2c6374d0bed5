"""No file the user did not vouch for is unpickled: a planted payload never runs.

The payload is a real pickle `__reduce__` that would create a marker directory
when unpickled (the same mechanism as an `os.system` payload). Every loading
entry point must refuse it with a one-line error naming the file and
`--trust-pickle`, and the marker must not exist afterwards. With
PANGU_TRUST_PICKLE=1 the same file *is* unpickled (the marker appears), which
shows the payload is live.
"""
import os
import pickle

import numpy as np
import paddle
import pytest

from paddle_pangu.cli import main
from paddle_pangu.config import get_preset
from paddle_pangu.io.safe_load import TRUST_ENV, UntrustedPickleError, load_pdparams, safe_paddle_load
from paddle_pangu.model import PanGuForCausalLM


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A model dir whose model_state.pdparams carries the payload next to real arrays."""
    root = tmp_path_factory.mktemp("pickle")
    model_dir = root / "model"
    paddle.seed(0)
    PanGuForCausalLM(get_preset("tiny", num_layers=2)).save_pretrained(str(model_dir))
    weights = model_dir / "model_state.pdparams"
    state = load_pdparams(str(weights))  # arrays only: loads without trust
    marker = str(root / "PAYLOAD_RAN")
    state["zz_payload"] = _Payload(marker)
    with open(weights, "wb") as f:
        pickle.dump(state, f, protocol=4)
    os.remove(model_dir / "MANIFEST.json")  # an attacker drops the manifest too: the unpickler is the last line
    single = root / "init.pdparams"
    single.write_bytes(weights.read_bytes())
    return str(model_dir), str(single), marker


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


def _refused(capsys, marker, argv, path):
    code = main(argv)
    err = capsys.readouterr().err
    assert not os.path.exists(marker), f"payload ran via {argv[0]}"
    assert code == 2, (argv[0], err[-400:])
    line = [l for l in err.splitlines() if "error:" in l]
    assert line and path in line[-1] and "--trust-pickle" in line[-1] and "not unpickled" in line[-1], err[-600:]


def test_from_pretrained_refuses(planted):
    model_dir, _, marker = planted
    with pytest.raises(UntrustedPickleError, match=r"model_state\.pdparams.*--trust-pickle"):
        PanGuForCausalLM.from_pretrained(model_dir)
    assert not os.path.exists(marker)


def test_weight_readers_and_paddle_load_refuse(planted):
    from paddle_pangu.io.weights import load_plain_weights, read_weight_files

    model_dir, single, marker = planted
    for call in (lambda: read_weight_files(model_dir), lambda: load_plain_weights(single),
                 lambda: load_pdparams(single)):
        with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
            call()
    with safe_paddle_load(), pytest.raises(UntrustedPickleError):
        paddle.load(single)  # what PaddleNLP / LoRA loading calls inside a pangu command
    assert not os.path.exists(marker)


def test_init_from_refuses(planted, tmp_path):
    from paddle_pangu.training.run_config import run_config_from_dict
    from paddle_pangu.training.trainer import Trainer

    model_dir, single, marker = planted
    for src in (model_dir, single):
        cfg = run_config_from_dict({"model": {"preset": "tiny", "overrides": {"num_layers": 2}, "init_from": src},
                                    "data": {"seq_len": 8, "synthetic": {"num_samples": 4}},
                                    "train": {"max_steps": 1, "output_dir": str(tmp_path / "run")}}, source="t")
        with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
            Trainer(cfg)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "{m}", "--prompt", "北京", "--max-new-tokens", "2"],
    ["evaluate", "--model", "{m}", "--task", "reviews", "--limit", "2"],
    ["export", "--model", "{m}", "--output", "{o}"],
    ["finetune", "--model", "{m}", "--train", "{t}", "--output", "{o}", "--max_steps", "1"],
    ["reshard", "{m}", "--output", "{o}", "--mp", "2"],
    ["convert", "--to", "hf", "{m}", "--output", "{o}"],
    ["prepare-data", "--input", "builtin:reviews", "--output", "{o}", "--perplexity-model", "{m}"],
], ids=lambda a: a[0])
def test_every_command_refuses(planted, tmp_path, capsys, argv):
    model_dir, _, marker = planted
    train = tmp_path / "sft.jsonl"
    train.write_text('{"prompt": "问", "response": "答"}\n', encoding="utf-8")
    argv = [a.format(m=model_dir, o=str(tmp_path / "out"), t=str(train)) for a in argv]
    _refused(capsys, marker, argv, "model_state.pdparams")


def test_arrays_only_pdparams_load_without_trust_and_payload_runs_only_when_trusted(planted, tmp_path, monkeypatch):
    _, single, marker = planted
    plain = tmp_path / "plain.pdparams"
    paddle.save({"w": paddle.ones([2, 3])}, str(plain))
    np.testing.assert_array_equal(load_pdparams(str(plain))["w"], np.ones([2, 3], "float32"))
    monkeypatch.setenv(TRUST_ENV, "1")
    load_pdparams(single)  # the user vouched: full unpickling, the payload is real
    assert os.path.isdir(marker)
    os.rmdir(marker)


def _trainer_rng_state():
    """What PaddleNLP's Trainer._save_checkpoint puts in rng_state.pth."""
    import random

    return {"python": random.getstate(), "numpy": np.random.get_state(), "cuda": paddle.get_rng_state(),
            "cpu": paddle.framework.core.default_cpu_generator().get_state()}


def test_trainer_rng_state_loads_without_trust_and_restores_the_generator(tmp_path):
    path = str(tmp_path / "rng_state.pth")
    paddle.seed(123)
    paddle.save(_trainer_rng_state(), path)
    expected = paddle.rand([4]).numpy()  # the next draw after the saved state
    paddle.seed(999)
    state = load_pdparams(path)
    paddle.framework.core.default_cpu_generator().set_state(state["cpu"])
    np.testing.assert_array_equal(paddle.rand([4]).numpy(), expected)
    import random

    random.setstate(state["python"])  # the python / numpy states keep the shapes their setters need
    np.random.set_state(state["numpy"])


def test_generator_state_is_allowed_only_in_rng_state_files(tmp_path):
    other = str(tmp_path / "model_state.pdparams")
    paddle.save({"cpu": paddle.framework.core.default_cpu_generator().get_state()}, other)
    with pytest.raises(UntrustedPickleError, match="GeneratorState"):
        load_pdparams(other)


@pytest.mark.parametrize("name", ["rng_state.pth", "rng_state_2.pth"])
def test_payload_in_an_rng_state_file_is_refused(tmp_path, name):
    marker = str(tmp_path / "PAYLOAD_RAN")
    state = _trainer_rng_state()
    state["cpu"] = _Payload(marker)  # beside a real generator state, where the Trainer keeps one
    state["cuda"] = [paddle.framework.core.default_cpu_generator().get_state()]
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        pickle.dump([state] if name != "rng_state.pth" else state, f, protocol=4)
    with pytest.raises(UntrustedPickleError, match=r"rng_state.*--trust-pickle"):
        load_pdparams(path)
    with safe_paddle_load(), pytest.raises(UntrustedPickleError):
        paddle.load(path, return_numpy=True)  # what the Trainer's _load_rng_state calls
    assert not os.path.exists(marker)
