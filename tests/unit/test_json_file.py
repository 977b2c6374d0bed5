"""The one whole-JSON reader (utils/json_file.py) and the one safetensors-index reader built on it
(io/weights.read_weight_map): every way a file can be wrong is one line naming the file, in the error class of
the command that reads it; and a user's `pangu generate` meets those lines, not a traceback."""
import json
import os

import numpy as np
import pytest

from paddle_pangu.cli import main
from paddle_pangu.errors import CheckpointError, ConfigError, DataError
from paddle_pangu.io.weights import WeightFileError, read_weight_map
from paddle_pangu.utils.json_file import read_json


@pytest.mark.parametrize("content,expected", [
    (None, "missing (a thing)"),
    ("dir", "is a directory"),
    (b"\xff\xfe{}", "not UTF-8 text (byte 0"),
    (b'{"a": 1,\n "b": ', "not valid JSON (Expecting value: line 2, column 7; expected a thing; truncated?)"),
    (b'{"a": 1 "b": 2}', "not valid JSON (Expecting ',' delimiter: line 1, column 9; expected a thing)"),
    (b'{"loss": NaN}', "non-finite number NaN"),
    (b'{"x": [1, -Infinity]}', "non-finite number -Infinity"),
    (b"[1, 2]", "expected a thing as a JSON object, got list"),
    (b'{"pad": "' + b"x" * 64 + b'"}', "larger than 32 bytes"),
])
def test_every_fault_is_one_line_naming_the_file_in_the_callers_error_class(tmp_path, content, expected):
    path = tmp_path / "f.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    for error in (DataError, CheckpointError, ConfigError):
        with pytest.raises(error) as info:
            read_json(str(path), "a thing", error, max_bytes=32 if isinstance(content, bytes) and b"pad" in content else None)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_a_good_file_reads_whole_and_expect_none_takes_any_top_level(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"a": [1, 2.5, "京"], "b": None}, ensure_ascii=False), encoding="utf-8")
    assert read_json(str(path), "x") == {"a": [1, 2.5, "京"], "b": None}
    path.write_text("[3, 4]")
    assert read_json(str(path), "x", expect=None) == [3, 4]
    assert read_json(str(path), "x", expect=list) == [3, 4]


@pytest.mark.parametrize("index,expected", [
    ({"metadata": {}}, 'expected a non-empty "weight_map"'),
    ({"weight_map": {}}, 'expected a non-empty "weight_map"'),
    ({"weight_map": ["a.safetensors"]}, 'expected a non-empty "weight_map"'),
    ({"weight_map": {"w": "../outside.safetensors"}}, "weight_map['w'] = '../outside.safetensors', expected a file name"),
    ({"weight_map": {"w": 3}}, "weight_map['w'] = 3"),
    ({"weight_map": {"w": ""}}, "weight_map['w'] = ''"),
])
def test_a_weight_index_is_read_by_one_rule(tmp_path, index, expected):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    for error in (WeightFileError, CheckpointError):
        with pytest.raises(error, match=str(path)) as info:
            read_weight_map(str(path), error)
        assert expected in str(info.value), info.value
    path.write_text(json.dumps({"weight_map": {"a": "x-1.safetensors", "b": "x-2.safetensors"}}))
    assert read_weight_map(str(path)) == {"a": "x-1.safetensors", "b": "x-2.safetensors"}


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory):
    """A tiny model directory whose weights are two safetensors shards listed by model.safetensors.index.json
    (the form HF / PaddleNLP write for large models), without a manifest."""
    import paddle
    from safetensors.numpy import save_file

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(0)
    model = PanGuForCausalLM(get_preset("tiny", num_layers=2, max_position_embeddings=16))
    path = tmp_path_factory.mktemp("indexed") / "model"
    path.mkdir()
    model.config.save_pretrained(str(path))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: np.ascontiguousarray(state[k]) for k in part}, str(path / file))
        weight_map.update({k: file for k in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path, weight_map


def _one_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, (code, err[-1500:])
    lines = [line for line in err.splitlines() if line.startswith(f"pangu {argv[0]}: error:")]
    assert len(lines) == 1, err[-1500:]
    return lines[0]


GENERATE = ["--prompt", "北京", "--max-new-tokens", "2", "--no-stream"]


def test_generate_on_a_damaged_index_or_a_nan_config_is_one_line(indexed_dir, tmp_path, capsys):
    path, weight_map = indexed_dir
    assert main(["generate", "--model", str(path), *GENERATE]) == 0  # the intact directory loads
    capsys.readouterr()
    index = path / "model.safetensors.index.json"
    good_index, good_config = index.read_text(), (path / "config.json").read_text()
    try:
        key = sorted(weight_map)[0]
        index.write_text(json.dumps({"weight_map": {**weight_map, key: "../elsewhere.safetensors"}}))
        line = _one_line(capsys, ["generate", "--model", str(path), *GENERATE])
        assert str(index) in line and repr(key) in line and "expected a file name" in line, line
        index.write_text(good_index[: len(good_index) // 2])
        line = _one_line(capsys, ["generate", "--model", str(path), *GENERATE])
        assert str(index) in line and "not valid JSON" in line and "truncated?" in line, line
        index.write_text(good_index)
        (path / "config.json").write_text(good_config.replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": NaN'))
        assert "NaN" in (path / "config.json").read_text()
        line = _one_line(capsys, ["generate", "--model", str(path), *GENERATE])
        assert "config.json" in line and "non-finite number NaN" in line, line
    finally:
        index.write_text(good_index)
        (path / "config.json").write_text(good_config)
