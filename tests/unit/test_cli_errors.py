"""Every user error reaches the terminal the same way: one line `pangu <command>: error: <message>` on stderr,
exit code 2, no traceback (the message names the file / field / value and what was expected)."""
import pytest

from paddle_pangu.cli import main


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pangu {command}: error: "), err
    return lines[0]


@pytest.fixture
def bad_field_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: tiny}\ndata: {synthetic: {num_samples: 8}}\ntrain: {max_step: 3}\n",
                    encoding="utf-8")
    return path


def test_bad_config_field(bad_field_yaml, capsys):
    assert main(["train", "--config", str(bad_field_yaml)]) == 2
    line = _one_error_line(capsys, "train")
    assert str(bad_field_yaml) in line and "train: unknown field(s) ['max_step']" in line and "max_steps" in line


def test_bad_parallel_value_and_duplicate_seed(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: {preset: tiny}\ndata: {synthetic: {num_samples: 8}}\nparallel: {seed: 3}\n",
                    encoding="utf-8")
    assert main(["train", "--config", str(path)]) == 2
    assert "parallel.seed=3: the run's one seed is train.seed" in _one_error_line(capsys, "train")


def test_missing_files(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: run config file not found" in _one_error_line(capsys, "train")
    assert main(["reshard", str(tmp_path / "nockpt"), "-o", str(tmp_path / "out")]) == 2
    assert "nockpt: no such checkpoint directory" in _one_error_line(capsys, "reshard")


def test_bad_tokenizer_argument(tmp_path, capsys):
    assert main(["tokenize", "--vocab", str(tmp_path / "missing.model"), "北京"]) == 2
    assert "missing.model" in _one_error_line(capsys, "tokenize")
    assert main(["tokenize", "--decode", "1 two"]) == 2
    assert "--decode expects integers" in _one_error_line(capsys, "tokenize")


def test_prepare_data_config_goes_through_the_typed_loader(tmp_path, capsys):
    path = tmp_path / "data.yaml"
    path.write_text("dedup: {num_perm: many}\n", encoding="utf-8")
    assert main(["prepare-data", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(path)]) == 2
    assert "dedup.num_perm='many': expected a number" in _one_error_line(capsys, "prepare-data")


def test_train_nproc_refuses_an_abbreviated_launch_flag_before_writing(tmp_path, capsys):
    """The workers get the user's own arguments minus --nproc / --verbose; an abbreviation of those (argparse
    accepts `--npro`) cannot be stripped, so it is refused instead of relaunching in every worker."""
    import os

    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pretrain", "tiny_cpu_single.yaml")
    out = tmp_path / "run"
    assert main(["train", "--config", config, "--output-dir", str(out), "--npro", "1"]) == 2
    assert "write --nproc and --verbose in full" in _one_error_line(capsys, "train")
    assert not out.exists()


@pytest.mark.parametrize("argv", [["generate", "--prompt", "x"], ["evaluate", "--task", "reviews", "--nproc", "2"]])
def test_unknown_model_preset_is_one_line_naming_the_presets(argv, capsys):
    assert main([argv[0], "--model", "preset:nope", *argv[1:]]) == 2
    line = _one_error_line(capsys, argv[0])
    assert "--model 'preset:nope': unknown PanGu preset 'nope'; expected one of" in line and "'tiny'" in line
