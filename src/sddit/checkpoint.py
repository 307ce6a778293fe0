"""Checkpoints that are written atomically, loaded without running code, and found again after a crash.

A checkpoint is one `torch.save` dict in `<run_dir>/checkpoints/ckpt-<step>.pt`. It is written to a
temporary file in the same directory, fsynced, then renamed over the final name, so a crash or a
full disk mid-write never leaves a half-written file under a checkpoint's name, and the previous
checkpoint stays intact.

Loading never unpickles arbitrary objects: `torch.load(weights_only=True)` accepts tensors and
plain Python values only, so a crafted `.pt` whose pickle would call, say, `os.system` is refused
before anything runs. Checkpoints of format 3 need nothing else; formats 1 and 2 stored numpy's RNG
state as an ndarray, which loads through the explicit allow-list `LEGACY_NUMPY_GLOBALS`.

What a run directory's checkpoints promise: a readable checkpoint is never deleted in favour of an
unreadable one. Unreadable files found on resume are moved to `checkpoints/unreadable/` (never
counted, never deleted), and when checkpoints exist but none is readable, training refuses to start
from step 0 and says what to do.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .runtime import atomic_write, warn as warn_stderr
from .seeding import numpy_state_from_tuple

CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
# 1: objective state as {"teacher": state_dict, "center_cls", "center_patch"};
# 2: objective state is the objective module's own state_dict ("teacher.<name>", "center_cls", ...);
# 3: per-rank numpy RNG state as plain values (seeding.rng_state), so weights_only needs no allow-list.
CHECKPOINT_VERSION = 3
QUARANTINE_DIR = "unreadable"  # under checkpoints/: unreadable files found on resume, kept, never counted
SAMPLING_KEYS = ("config", "ema")  # what sample / eval / generate need
RESUME_KEYS = ("step", "config", "model", "ema", "optimizer", "objective", "sampler", "rng")


def _legacy_numpy_globals() -> list:
    """What numpy's RNG state of formats 1-2 needs to unpickle: an empty uint32 ndarray rebuilt by
    `_reconstruct` and filled by `__setstate__`. Nothing here can run code. Pickles written under
    numpy 1 name `numpy.core.multiarray._reconstruct`, numpy 2 `numpy._core.multiarray._reconstruct`."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    allowed: list = [
        np.ndarray,
        np.dtype,
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
    ]
    uint32_dtype = getattr(getattr(np, "dtypes", None), "UInt32DType", None)  # numpy >= 1.25 builds dtypes as classes
    if uint32_dtype is not None:
        allowed.append(uint32_dtype)
    return allowed


LEGACY_NUMPY_GLOBALS = _legacy_numpy_globals()


class UnsafeCheckpointError(CheckpointError):
    """A `.pt` whose pickle asks for something other than tensors and plain values: refused unread."""


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint written by an older version of this code to the current layout."""
    if state.get("version", 1) < 2:
        objective = dict(state.get("objective") or {})
        teacher = objective.pop("teacher", None)
        if teacher is not None:
            objective.update({f"teacher.{k}": v for k, v in teacher.items()})
        state["objective"] = objective
        state["version"] = 2
    if state["version"] < 3:
        for rank_state in (state.get("rng") or {}).values():
            if isinstance(rank_state, dict) and isinstance(rank_state.get("numpy"), tuple):
                rank_state["numpy"] = numpy_state_from_tuple(rank_state["numpy"])
        state["version"] = 3
    return state


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_step(path: Path) -> int:
    m = CKPT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not named like a checkpoint (ckpt-<step>.pt)")
    return int(m.group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run (named ckpt-<step>.pt, readable or not), oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    state: dict[str, Any], run_dir: str | Path, step: int, keep_last: int = 2, warn: Callable[[str], Any] = warn_stderr
) -> Path:
    """Atomic write (temp file, fsync, rename), then prune the OLDER checkpoints to `keep_last` in all.

    Only checkpoints with a lower step than the one just written are pruned: a file with a higher
    step is never deleted for a lower one. An older-named file is deleted only when the step it
    holds is the one its name says; any other (renamed, edited, unreadable) moves to
    checkpoints/unreadable/ instead, since its real step may be at or above the resumed one.
    """
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{step:07d}.pt"
    with atomic_write(final, fsync=True) as f:
        torch.save(state, f)
    if keep_last > 0:
        older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            held = stored_step(old)
            if held == checkpoint_step(old):
                old.unlink(missing_ok=True)
            elif old.exists():  # its real step is unknown or not its name's: it may be newer; keep it
                warn(
                    f"warning: {old.name} {'is unreadable' if held is None else f'holds step {held}'}, not the step of "
                    f"its name: moved it to {quarantine(old)} instead of deleting it"
                )
    return final


def stored_step(path: Path) -> int | None:
    """The step a checkpoint file holds (None when unreadable), read without loading its tensors
    (memory-mapped, weights-only), so pruning can check what it deletes at any checkpoint size."""
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable, for whatever reason
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) else None


def _refused_global(message: str) -> str | None:
    """The global a weights-only unpickler refused, from torch's error text (None: not a refusal)."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return m.group(1)
    m = re.search(r"but got <class '([\w.]+)'>", message)
    return m.group(1) if m else None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", need: tuple[str, ...] = SAMPLING_KEYS
) -> dict[str, Any]:
    """A checkpoint's dict, upgraded to the current format; CheckpointError when it cannot be used
    (UnsafeCheckpointError when its pickle asks for anything but tensors and plain values)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a .pt file or a run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file: pass a .pt file or a run directory")
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says enough
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        if refused is not None:
            raise UnsafeCheckpointError(
                f"{path} was refused unread: its pickle asks for {refused}, which could run code, and sddit loads only "
                "tensors and plain values; delete the file unless you know what wrote it"
            ) from None
        raise _unreadable(path, e) from None
    except Exception as e:  # truncated zip, wrong format, I/O error, ...
        raise _unreadable(path, e) from None
    if not isinstance(state, dict):
        raise _not_ours(path, f"it holds a {type(state).__name__}, not a dict")
    missing = [k for k in need if k not in state]
    if missing:
        raise _not_ours(path, f"no {', '.join(repr(k) for k in missing)} entry")
    version = state.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise _not_ours(path, f"format {version!r}; this code reads formats 1 to {CHECKPOINT_VERSION}")
    for key, kind in (
        ("config", dict),
        ("ema", dict),
        ("model", dict),
        ("rng", dict),
        ("objective", dict),
        ("step", int),
    ):
        if key in state and not isinstance(state[key], kind):
            raise _not_ours(path, f"its {key!r} is a {type(state[key]).__name__}, not a {kind.__name__}")
    if "step" in state:
        _check_step(path, state)
    return upgrade(state)


def _check_step(path: Path, state: dict[str, Any]) -> None:
    """A checkpoint's step must lie in [0, train.max_steps of its own config] and match its file name.

    Training resumes at the stored step and prunes by the names, so a file that disagrees (a renamed
    or edited file) would rewind a run or let it overwrite and delete the real later checkpoints.
    It is treated as unreadable: skipped, and on resume moved to checkpoints/unreadable/.
    """
    step = state["step"]
    train = state["config"].get("train") if isinstance(state.get("config"), dict) else None
    max_steps = train.get("max_steps") if isinstance(train, dict) else None
    named = CKPT_RE.match(path.name)
    if step < 0 or (isinstance(max_steps, int) and step > max_steps):
        limit = f"[0, {max_steps}] (train.max_steps of its own config)" if isinstance(max_steps, int) else "[0, ...)"
        reason = f"it holds step {step}, outside {limit}"
    elif named and int(named.group(1)) != step:
        reason = f"it holds step {step} but is named for step {int(named.group(1))}"
    else:
        return
    err = CheckpointError(f"{path} cannot be trusted ({reason}): it was renamed or edited; use another checkpoint")
    err.reason = reason  # type: ignore[attr-defined]
    raise err


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    text = str(e)
    if "WeightsUnpickler error:" in text:  # drop torch's advice to load with weights_only=False
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split()).split(". ")[0]  # the first sentence says it
    reason = f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__
    err = CheckpointError(f"checkpoint {path} is unreadable ({reason}): it is truncated or not a checkpoint")
    err.reason = reason  # type: ignore[attr-defined]  (for the summary when none is readable)
    return err


def _not_ours(path: Path, reason: str) -> CheckpointError:
    err = CheckpointError(f"{path} is not an sddit checkpoint ({reason}): pass a checkpoint written by `sddit train`")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def quarantine(path: Path) -> Path:
    """Move an unreadable checkpoint to checkpoints/unreadable/ (a free name there), out of the count."""
    dest_dir = path.parent / QUARANTINE_DIR
    dest_dir.mkdir(exist_ok=True)
    dest, k = dest_dir / path.name, 1
    while dest.exists():
        dest, k = dest_dir / f"{path.name}.{k}", k + 1
    path.rename(dest)
    return dest


def load_latest(
    run_dir: str | Path,
    map_location: str | torch.device = "cpu",
    warn: Callable[[str], Any] = warn_stderr,
    need: tuple[str, ...] = RESUME_KEYS,
    move_unreadable: bool = False,
) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run (with its path as `_path`), or None when there is none.

    Unreadable newer files are reported and skipped; with `move_unreadable` (training, rank 0) they
    are also moved to checkpoints/unreadable/. When files exist but none is readable this is a
    CheckpointError, never a silent fresh start. A refused (unsafe) file is always an error.
    """
    paths = list_checkpoints(run_dir)
    bad: list[tuple[Path, CheckpointError]] = []
    for path in reversed(paths):
        try:
            state = load_checkpoint(path, map_location, need)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            if path.exists():  # another rank may have moved it already
                bad.append((path, e))
            continue
        for p, e in bad:
            if move_unreadable:
                try:
                    moved = f"moved it to {quarantine(p)}"
                except FileNotFoundError:
                    moved = "it was moved away"
            else:
                moved = "skipped it"
            warn(f"warning: {e}; {moved} and falling back to {path.name}")
        state["_path"] = str(path)
        return state
    if bad:
        names = ", ".join(p.name for p, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{checkpoint_dir(run_dir)} holds {len(bad)} checkpoint file(s) but none is readable ({names}; newest: "
            f"{getattr(bad[0][1], 'reason', bad[0][1])}): restore a good copy, or move them out of checkpoints/ "
            "(e.g. into checkpoints/unreadable/) to start again from step 0"
        )
    return None


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint file of a run directory (not opened)."""
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        where = "does not exist" if not p.exists() else "has no checkpoints"
        raise CheckpointError(f"{p} {where}: pass a .pt file or a run directory that has checkpoints/")
    return ckpts[-1]


def open_checkpoint(
    path_or_run_dir: str | Path, map_location: str | torch.device = "cpu", warn: Callable[[str], Any] = warn_stderr
) -> tuple[Path, dict[str, Any]]:
    """(path, state) of a checkpoint file, or of the newest READABLE checkpoint of a run directory
    (unreadable newer files are reported and left where they are: sampling never moves files)."""
    p = Path(path_or_run_dir)
    if not p.is_dir():
        path = resolve_checkpoint(p)
        return path, load_checkpoint(path, map_location, SAMPLING_KEYS)
    state = load_latest(p, map_location, warn=warn, need=SAMPLING_KEYS)
    if state is None:
        raise CheckpointError(f"{p} has no checkpoints: pass a .pt file or a run directory that has checkpoints/")
    return Path(state.pop("_path")), state
