"""`pangu train` end to end: the run-config contract, --force-resume, and one-line config errors."""
import os

import pytest
import yaml

from paddle_pangu.cli import main

CONFIG = {
    "model": {"preset": "tiny", "overrides": {"num_layers": 2, "vocab_size": 512, "max_position_embeddings": 16}},
    "data": {"seq_len": 16, "synthetic": {"num_samples": 16}},
    "optim": {"lr": 3.0e-3, "warmup_steps": 1},
    "parallel": {"micro_batch_size": 2},
    "train": {"max_steps": 4, "seed": 3, "eval_iters": 1},
    "checkpoint": {"save_interval": 1, "save_final_model": False},
    "logging": {"log_interval": 1, "progress_bar": False, "visualdl": False},
}


def _config(tmp_path, name="run.yaml", **sections):
    cfg = yaml.safe_load(yaml.safe_dump(CONFIG))
    cfg["train"]["output_dir"] = str(tmp_path / "out")
    for key, value in sections.items():
        cfg[key].update(value)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if "error:" in l]
    assert lines, err[-1000:]
    return lines[-1]


def test_changed_config_refused_then_forced(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["train", "--config", cfg, "--stop-after-steps", "2"]) == 0
    code = main(["train", "--config", cfg, "--set", "optim.lr=0.01", "--set", "train.seed=4", "--max-steps", "6"])
    assert code == 2
    line = _error_line(capsys)
    assert "optim.lr: 0.003 -> 0.01" in line and "train.seed: 3 -> 4" in line and "--force-resume" in line
    assert "max_steps" not in line  # a safe change is not a reason to refuse
    assert main(["train", "--config", cfg, "--set", "optim.lr=0.01", "--set", "train.seed=4", "--max-steps", "6",
                 "--force-resume"]) == 0
    assert os.path.isdir(tmp_path / "out" / "checkpoints" / "step_00000006")


@pytest.mark.parametrize("sections,field", [
    ({"data": {"seq_len": -8}}, "data.seq_len=-8"),
    ({"data": {"seq_len": 0}}, "data.seq_len=0"),
    ({"data": {"synthetic": {"num_samples": -1}}}, "data.synthetic.num_samples=-1"),
    ({"checkpoint": {"resume": "/nonexistent/step_00000009"}}, "checkpoint.resume='/nonexistent/step_00000009'"),
])
def test_bad_values_are_one_line_errors(tmp_path, capsys, sections, field):
    assert main(["train", "--config", _config(tmp_path, **sections)]) == 2
    line = _error_line(capsys)
    assert line.startswith("pangu train: error:") and field in line
