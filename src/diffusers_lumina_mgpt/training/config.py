"""YAML run configs: defaults, `--set key=value` overrides and checks with errors that name the key.

A config is a nested dict. `load_config(path, defaults, overrides)` deep-merges the file over
`defaults`, applies each `a.b.c=value` override (the value parsed as YAML, so `0.1`, `true`,
`[1, 2]` work), and rejects keys that `defaults` does not know, so a typo never trains silently
with a default. Paths in the file are resolved against the file's folder by the callers that
use them (`resolve_path`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

# dotted keys whose value is free-form (a list of stages, a dict of model kwargs): not checked against defaults
FREE_FORM = {"stages", "model.new", "data.kinds"}


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ValueError(f"unknown config key {path!r}; known keys here: {', '.join(sorted(base)) or '(none)'}")
        if isinstance(base[key], dict) and path not in FREE_FORM:
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {path!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` to `config` in place (the value parsed as YAML)."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ValueError(f"--set {key}: {'.'.join(parts[:i + 1])!r} is not in the config")
    last = parts[-1]
    value = yaml.safe_load(raw)
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        slot: int | str = int(last)
    elif isinstance(node, dict) and (last in node or any(".".join(parts[:i]) in FREE_FORM for i in range(1, len(parts)))):
        slot = last
    else:
        raise ValueError(f"--set {key}: {last!r} is not a key of {'.'.join(parts[:-1]) or 'the config'}")
    current = node[slot] if isinstance(node, list) else node.get(slot)
    if isinstance(value, bool) and isinstance(current, str):
        value = raw.strip()  # YAML 1.1 reads no/yes/on/off as booleans; a text setting keeps the word
    node[slot] = value


def load_config(path: str | Path | None, defaults: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(data, Mapping):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    config = _merge(defaults, data, "")
    for assignment in overrides:
        apply_override(config, assignment)
    config["_config_dir"] = str(Path(path).resolve().parent) if path is not None else str(Path.cwd())
    return config


def resolve_path(config: Mapping[str, Any], value: str | None) -> str | None:
    """A path from the config, relative to the config file's folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else Path(config["_config_dir"]) / p)


def positive(config: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node[part]
        if not isinstance(node, (int, float)) or node <= 0:
            raise ValueError(f"config {key} must be a positive number, got {node!r}")


__all__ = ["apply_override", "load_config", "positive", "resolve_path"]
