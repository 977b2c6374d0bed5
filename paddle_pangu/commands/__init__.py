"""Small `pangu` subcommands that do not belong to a larger capability (info, tokenize, ...).

Each module defines `add_arguments(parser)` and `run(args) -> int | None` (see `paddle_pangu.cli`).
"""
