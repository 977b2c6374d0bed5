"""Small things on the user's paths, through the `pangu` command (a subprocess, or its `main` in this
process where three start-ups would dominate): a layout refusal suggests the user's full command, and
`pangu generate --do-sample` is not the same text every run."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pangu(*args):
    return subprocess.run([sys.executable, "-m", "paddle_pangu.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_a_layout_refusal_keeps_the_users_overrides(tmp_path):
    config = ROOT / "configs" / "pretrain" / "mini_cpu_mp2.yaml"
    proc = pangu("train", "--config", config, "--set", "train.max_steps=3", "--set", "optim.lr=0.001",
                 "--output-dir", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = [l for l in proc.stderr.splitlines() if l.startswith("pangu train: error:")]
    assert len(line) == 1, proc.stderr[-3000:]
    want = (f"`pangu train --config {config} --set train.max_steps=3 --set optim.lr=0.001 --output-dir "
            f"{tmp_path / 'run'} --nproc 2`")
    assert want in line[0], line[0]


def _sample(capsys, *extra):
    """`pangu generate --do-sample` in this process (three runs in subprocesses cost ~25 s of start-up):
    its stdout rows and the seeds it printed on stderr."""
    from paddle_pangu.cli import main

    capsys.readouterr()
    code = main(["generate", "--model", "preset:tiny", "--prompt", "北京", "--prompt", "北京", "--do-sample",
                 "--max-new-tokens", "8", "--no-stream", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    rows = out.out.strip().splitlines()[-2:]
    seeds = re.findall(r"sampling with --seed (\d+)", out.err)
    return rows, seeds


def test_sampling_without_a_seed_differs_per_run_and_per_row_and_the_printed_seed_repeats_it(capsys):
    rows, seeds = _sample(capsys)
    assert len(seeds) == 1, "the seed used is printed"
    # a random tiny model samples nearly uniformly from 40000 pieces: 8 equal draws by chance are ~impossible
    assert rows[0] != rows[1], rows  # identical prompts, each row its own stream
    again, seeds_again = _sample(capsys)
    assert again != rows and seeds_again != seeds
    assert _sample(capsys, "--seed", seeds[0]) == (rows, [])  # the printed seed reproduces the run; nothing printed
