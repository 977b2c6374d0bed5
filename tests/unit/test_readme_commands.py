"""The README's "Using it" commands are copy-pasteable in order on a fresh clone (issue 17).

Each `pangu` line is parsed by the real CLI parser of its subcommand (so every flag exists), every path
it reads exists in the repository or is written by an earlier line, a config's data paths are written by
an earlier `prepare-data`, and everything written lands under runs/ or data/, which .gitignore ignores.
The cheap `pangu plan --write-config` line runs for real (output redirected to a temporary file).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from paddle_pangu import cli

ROOT = Path(__file__).resolve().parents[2]

# flags whose value is a path the command reads / writes
READS = {"--config", "--model", "--base-config", "--perplexity", "--model_name_or_path", "--input"}
WRITES = {"--output", "--output_dir", "--output-dir", "--write-config"}
POSITIONAL_READS = {"convert", "reshard"}  # SRC


def using_it_lines(readme: str) -> list[str]:
    section = readme.split("## Using it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def commands(line: str) -> list[list[str]]:
    """The shell commands of one line (comments cut, split on && and ;)."""
    tokens = shlex.split(line, comments=True)
    out, cur = [], []
    for tok in tokens:
        if tok in ("&&", ";"):
            out.append(cur)
            cur = []
        elif tok.endswith(";"):
            cur.append(tok[:-1])
            out.append(cur)
            cur = []
        else:
            cur.append(tok)
    return [c for c in out + [cur] if c]


def _flag_values(argv: list[str], flags: set[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags]


def _is_made(path: str, made: list[str]) -> bool:
    p = Path(path)
    return (ROOT / p).exists() or any(p == Path(m) or Path(m) in p.parents for m in made)


def _config_outputs(config: str, argv: list[str], made_configs: dict[str, dict]) -> tuple[list[str], dict]:
    run = made_configs.get(config) or yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
    out = _flag_values(argv, {"--output-dir"}) or [run["train"]["output_dir"]]
    return out, run


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return using_it_lines((ROOT / "README.md").read_text(encoding="utf-8"))


def test_every_line_is_a_real_pangu_command_on_existing_or_earlier_paths(lines):
    assert len(lines) >= 10
    made: list[str] = []
    made_configs: dict[str, dict] = {}
    seen = set()
    for line in lines:
        for argv in commands(line):
            assert argv[0] == "pangu", f"not a pangu command: {line}"
            sub = argv[1]
            assert sub in cli.COMMANDS, f"{sub!r} is no pangu subcommand: {line}"
            seen.add(sub)
            parser = cli.build_parser(only=sub)
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:  # argparse: unknown flag or missing required argument
                pytest.fail(f"pangu {sub} does not accept: {' '.join(argv)} (exit {exc.code})")
            reads = [v for v in _flag_values(argv, READS) if not v.startswith(("builtin:", "preset:"))]
            if sub in POSITIONAL_READS:
                reads.append(next(a for a in argv[2:] if not a.startswith("-")
                                  and argv[argv.index(a) - 1] not in WRITES | {"--mp", "--pp", "--to", "--from"}))
            for path in reads:
                assert _is_made(path, made), f"{path} neither in the repository nor written by an earlier line: {line}"
            writes = _flag_values(argv, WRITES)
            if sub == "train":
                config = _flag_values(argv, {"--config"})[0]
                outs, run = _config_outputs(config, argv, made_configs)
                for data in run["data"]["paths"]:
                    if not str(data).startswith(("builtin:", "synthetic")):
                        assert _is_made(data, made), f"{config} reads {data}, which no earlier line prepares"
                writes += outs
                made += [str(Path(o) / "final_model") for o in outs]
            if sub == "plan" and "--write-config" in argv:
                made_configs[_flag_values(argv, {"--write-config"})[0]] = {
                    "train": {"output_dir": "runs/unnamed"}, "data": yaml.safe_load(
                        (ROOT / _flag_values(argv, {"--base-config"})[0]).read_text(encoding="utf-8"))["data"]}
            for path in writes:
                assert Path(path).parts[0] in ("runs", "data"), f"{line} writes {path} outside runs/ and data/"
            made += writes
    # the product tour: data, training, evaluation, fine-tuning, inference, serving, planning
    assert {"prepare-data", "train", "evaluate", "finetune", "export", "generate", "serve", "plan"} <= seen


def test_outputs_dirs_are_ignored():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert "/runs/" in ignored and "/data/" in ignored


def test_prepare_data_output_is_what_the_train_config_reads(lines):
    prepared = [_flag_values(a, {"--output"})[0] for line in lines for a in commands(line) if a[1] == "prepare-data"]
    trained = [_flag_values(a, {"--config"})[0] for line in lines for a in commands(line)
               if a[1] == "train" and (ROOT / _flag_values(a, {"--config"})[0]).exists()]
    assert prepared and trained
    for config in trained:
        run = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))
        assert set(map(str, run["data"]["paths"])) <= set(prepared), (config, prepared)


def test_readme_plan_write_config_line_runs(lines, tmp_path, capsys):
    argv = next(a for line in lines for a in commands(line) if a[1] == "plan" and "--write-config" in a)
    out = tmp_path / "plan.yaml"
    argv = [str(out) if prev == "--write-config" else a for prev, a in zip([""] + argv, argv)]
    argv = [str(ROOT / a) if prev == "--base-config" else a for prev, a in zip([""] + argv, argv)]
    assert cli.main(argv[1:]) == 0
    run = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert run["world_size"] == int(_flag_values(argv, {"--devices"})[0])
    assert run["data"]["paths"] == ["data/peoples_daily"]  # kept from --base-config
