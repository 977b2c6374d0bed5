"""The `pangu` command table: every subcommand module exists and follows the add_arguments/run contract."""
import argparse
import importlib

import pytest

from paddle_pangu.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_module_has_the_contract(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # arguments register without clashes
    assert build_parser(only=name).format_help()


def test_unknown_command_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "prepare-data" in capsys.readouterr().out
