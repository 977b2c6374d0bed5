"""The project's error root.

Every error the project raises for something the *user* can fix (a config
field, a data file, a checkpoint, a conversion input, a tokenizer file, a
request) derives from `PanGuError`. `paddle_pangu.cli.main` catches it once and
prints `pangu <command>: error: <message>` on stderr with exit code 2; set
`PANGU_DEBUG=1` to see the traceback instead. Anything else that escapes is a
bug in the project and keeps its traceback.

Subclasses keep a builtin base where callers already catch it (`ValueError`,
`FileNotFoundError`, `RuntimeError`), so `except ValueError` keeps working.
Messages name the file / field / value and what was expected, on one line.
"""
from __future__ import annotations


class PanGuError(Exception):
    """Base of every user-facing error of paddle_pangu."""


class ConfigError(PanGuError, ValueError):
    """A run / model / parallel / data config field is missing, mistyped or inconsistent."""


class DataError(PanGuError, ValueError):
    """An input data file (corpus, task file, fine-tuning file) is missing, unreadable or malformed."""


class CheckpointError(PanGuError, RuntimeError):
    """A checkpoint or model directory is missing, corrupt, untrusted or does not match the run."""


class UsageError(PanGuError, ValueError):
    """A command-line argument or request value is out of its allowed range."""
