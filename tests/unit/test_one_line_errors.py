"""User errors of generate / finetune are one `pangu <cmd>: error:` line with exit 2, never a traceback."""
import paddle
import pytest

from paddle_pangu.cli import main
from paddle_pangu.config import get_preset
from paddle_pangu.model import PanGuForCausalLM


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "model"
    paddle.seed(0)
    PanGuForCausalLM(get_preset("tiny", num_layers=2, max_position_embeddings=16)).save_pretrained(str(path))
    return str(path)


def _one_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-1500:]
    lines = [l for l in err.splitlines() if l.startswith(f"pangu {argv[0]}: error:")]
    assert len(lines) == 1, err[-1500:]
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "北京" * 40, "--max-new-tokens", "4"], "exceeds the model's context 16"),
    (["--prompt", "北京", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1, got 0"),
    (["--prompt", "北京", "--max-new-tokens", "16"], "must be below the model's context 16"),
])
def test_generate_argument_errors(model_dir, capsys, args, expected):
    assert expected in _one_line(capsys, ["generate", "--model", model_dir, "--no-stream", *args])


def test_temperature_zero_is_greedy_not_an_error(model_dir, capsys):
    args = ["generate", "--model", model_dir, "--no-stream", "--prompt", "北京", "--max-new-tokens", "3"]
    assert main(args + ["--temperature", "0", "--do-sample"]) == 0
    sampled_at_zero = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == sampled_at_zero


def test_missing_finetune_file(model_dir, tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    line = _one_line(capsys, ["finetune", "--model", model_dir, "--train", missing, "--output", str(tmp_path / "o"),
                              "--max_steps", "1"])
    assert missing in line
