"""The one reader of a user's YAML file (`pangu train --config`, `pangu prepare-data --config`, `pangu finetune
X.yaml`, `pangu plan --base-config`), with one policy: the file's top-level mapping, or a one-line error naming
the file for each way it can be wrong (missing or unreadable, not UTF-8, a YAML syntax error with its line and
column, a top level that is not a mapping, a key given twice in one mapping). An empty file is `{}`.
Typed conversion of the values is `config/loader.py`'s."""
from __future__ import annotations

import os

import yaml

from paddle_pangu.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently).

    Keys brought in by a `<<:` merge may be overridden, as YAML intends; only keys written twice are refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _describe(exc: yaml.YAMLError) -> str:
    """`line L, column C: problem` for a marked error (1-based, as editors count), else PyYAML's text on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    context, where = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and where is not None:  # e.g. "while parsing a flow sequence" started at this line / column
        context += f" started at line {where.line + 1}, column {where.column + 1}"
    return f"line {mark.line + 1}, column {mark.column + 1}: {' '.join(problem.split())}" + (
        f" ({' '.join(context.split())})" if context else "")


def read_yaml(path: str, what: str = "config file", error: type[ConfigError] = ConfigError) -> dict:
    """The top-level mapping of the YAML file `path` (empty file: {}); `error` (a PanGuError kind) names `path`.

    `what` names the kind of file in the not-found message (e.g. "run config file")."""
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {_describe(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be a mapping of key: value lines, got a {type(data).__name__}")
    return data
