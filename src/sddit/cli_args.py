"""Checks of `sddit` arguments that argparse cannot express, run before any work: each failure is a
one-line ConfigError naming the flag and what it must be; and defaults that depend on other arguments."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from .config import DEFAULT_CONFIG
from .errors import ConfigError


def at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Flags that must be >= minimum when given: a one-line error before any work."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ConfigError(f"--{name.replace('_', '-')} {value} is not valid: it must be >= {minimum}")


def output_file(path: str | None, flag: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file path that is a directory (`--json /tmp`) or of a type
    the writer does not know."""
    if path is None:
        return
    if Path(path).expanduser().is_dir():
        example = Path(path) / ("result" + (suffixes[0] if suffixes else ".json"))
        raise ConfigError(f"{flag} {path} is a directory: pass a file path, e.g. {example}")
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path} must end in {' or '.join(suffixes)}")


def writable_parent(path: str | None, flag: str) -> None:
    """Fail before a long evaluation, not after it, when its output file cannot be created."""
    if path is None:
        return
    output_file(path, flag)
    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: the folder {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


# Arguments that name a file or folder; an empty one would mean the current directory (`generate
# --out ''` wrote into it). train's run_dir is checked with the config.
PATH_ARGS = (
    "checkpoint",
    "out",
    "json",
    "samples",
    "ref",
    "cache_ref",
    "inception",
    "official_dit",
    "vae",
    "root",
    "config",
)
POSITIONAL = {"checkpoint", "root"}


def no_empty_paths(args: argparse.Namespace) -> None:
    """Refuse an empty path argument, named as the user typed it (`--out`, or CHECKPOINT / ROOT / OUT)."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            label = (
                name.upper()
                if name in POSITIONAL or (name == "out" and args.command == "prepare")
                else f"--{name.replace('_', '-')}"
            )
            raise ConfigError(f"{label} is empty: pass a path")


def finite_numbers(args: argparse.Namespace) -> None:
    """Every float flag (--cfg-scale, --scale-factor, ...) must be a finite number: `nan` used to
    sample an all-black grid with exit 0."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} {value} is not valid: it must be a finite number")


def train_config(args: argparse.Namespace) -> str:
    """--config, else the config.json of an existing --run-dir (`sddit train --run-dir RUN` resumes RUN
    with the config it was trained with, as DiT/fast-DiT users resume by naming the run), else the default."""
    from .train.run_dir import CONFIG_NAME

    if args.config is None and args.run_dir is not None and (Path(args.run_dir).expanduser() / CONFIG_NAME).is_file():
        return str(Path(args.run_dir).expanduser() / CONFIG_NAME)
    return args.config or DEFAULT_CONFIG
