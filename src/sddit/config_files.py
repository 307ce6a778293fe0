"""Reading config files: YAML through a safe loader that refuses a key given twice in one mapping,
JSON (a run directory's config.json) as JSON; a parse error is a one-line ConfigError with the place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: the last one
    would silently win, and a researcher editing `lr:` in one place would train with the other."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error says it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_config_file(path: Path) -> Any:
    """A config file's mapping; JSON files are read as JSON (for its error messages), the rest as YAML."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"cannot read config {path} ({getattr(e, 'strerror', None) or e}): pass a readable YAML or JSON file"
        ) from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}): fix the file") from None
    try:
        return safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(e)}): fix the file") from None


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line out of PyYAML's multi-line message: the problem and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
