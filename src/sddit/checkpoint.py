"""Checkpoints that are written atomically and found again after a crash.

A checkpoint is one `torch.save` dict in `<run_dir>/checkpoints/ckpt-<step>.pt`. It is written to a
temporary file in the same directory, fsynced, then renamed over the final name, so a crash or a
full disk mid-write never leaves a half-written file under a checkpoint's name, and the previous
checkpoint stays intact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .runtime import atomic_write

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
# 1: objective state as {"teacher": state_dict, "center_cls", "center_patch"};
# 2: objective state is the objective module's own state_dict ("teacher.<name>", "center_cls", ...).
CHECKPOINT_VERSION = 2


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint written by an older version of this code to the current layout."""
    if state.get("version", 1) < 2:
        objective = dict(state.get("objective") or {})
        teacher = objective.pop("teacher", None)
        if teacher is not None:
            objective.update({f"teacher.{k}": v for k, v in teacher.items()})
        state["objective"] = objective
        state["version"] = 2
    return state


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep_last: int = 2) -> Path:
    """Atomic write (temp file, fsync, rename), then prune to the newest `keep_last` checkpoints."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{step:07d}.pt"
    with atomic_write(final, fsync=True) as f:
        torch.save(state, f)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, wrong format, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an sddit checkpoint (no 'model' entry)")
    return upgrade(state)


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu", warn=print) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run; unreadable newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            warn(f"warning: {e}; falling back to the previous checkpoint")
            continue
        state["_path"] = str(path)
        return state
    return None


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise CheckpointError(f"no checkpoint found at {p}: pass a .pt file or a run directory that has checkpoints/")
    return ckpts[-1]
