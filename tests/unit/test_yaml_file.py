"""One YAML reader (utils/yaml_file.py) for every command that reads a user's YAML: each way a file can be
broken is one line naming the file (and the line / column where YAML says so), the same from every command."""
import pytest

from paddle_pangu.cli import main
from paddle_pangu.errors import ConfigError
from paddle_pangu.utils.yaml_file import read_yaml

BROKEN = {  # file text -> what the one-line error must say
    "model: [unclosed\ntrain: {}\n":  # where PyYAML gave up, and where the unclosed sequence started
        "not valid YAML: line 2, column 6: expected ',' or ']', but got ':' (while parsing a flow sequence started at line 1, "
        "column 8)",
    "model:\n  preset: tiny\n bad_indent: 1\n": "not valid YAML: line 3, column 2:",
    "- a\n- b\n": "top level must be a mapping of key: value lines, got a list",
    "just text\n": "top level must be a mapping of key: value lines, got a str",
    "train: {max_steps: 3}\nmodel: {preset: tiny}\ntrain: {max_steps: 5}\n":
        "line 3, column 1: duplicate key 'train' (first at line 1)",
    "model: {preset: tiny, preset: 350m}\n": "line 1, column 23: duplicate key 'preset' (first at line 1)",
}


@pytest.mark.parametrize("text,expected", list(BROKEN.items()), ids=["syntax", "indent", "list", "scalar",
                                                                     "dup-top", "dup-nested"])
def test_reader_names_the_file_and_the_problem_on_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        read_yaml(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_reader_missing_binary_empty_and_merge_keys(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: run config file not found"):
        read_yaml(str(tmp_path / "nope.yaml"), "run config file")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text \(byte 3\)"):
        read_yaml(str(binary))
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert read_yaml(str(empty)) == {}
    merged = tmp_path / "merge.yaml"  # a key brought by `<<:` may be overridden: that is not a duplicate
    merged.write_text("base: &b {lr: 1, steps: 2}\nrun: {<<: *b, lr: 3}\n", encoding="utf-8")
    assert read_yaml(str(merged))["run"] == {"lr": 3, "steps": 2}


def test_train_finetune_and_plan_give_the_same_line_for_a_broken_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: tiny}\ntrain: [1, 2\n", encoding="utf-8")
    commands = {
        "train": ["train", "--config", str(bad)],
        "finetune": ["finetune", str(bad)],
        "plan": ["plan", "--preset", "350m", "--devices", "8", "--global-batch", "64",
                 "--write-config", str(tmp_path / "out.yaml"), "--base-config", str(bad)],
    }
    messages = set()
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and lines[0].startswith(f"pangu {name}: error: {bad}: not valid YAML: line "), err
        messages.add(lines[0].split(": error: ", 1)[1])
    assert len(messages) == 1, messages
    assert not (tmp_path / "out.yaml").exists()  # plan refused the base before writing anything
