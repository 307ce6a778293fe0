"""The run directory of `sddit train`: one training process at a time, metrics that agree with the
checkpoint a run resumes from, and a record of every config change across resumes.

Why each piece exists:

* The lock. Two `sddit train` on one directory both ran to the end: `metrics.jsonl` interleaved
  their losses and the checkpoints came from one run, `config.json` from the other. Rank 0 holds
  an exclusive `flock` on `train.lock` for the whole run. The kernel drops it when the process dies
  (SIGKILL, OOM, node crash on a local disk), so a lock left by a dead process never blocks; the
  file keeps the holder's pid and host for the message a second process gets.
* Metrics. Steps between the resumed checkpoint and the interruption are trained (and logged)
  again, so lines with a step above the resumed one are dropped before appending: the file then
  holds each step once, as if the run had never stopped.
* Config changes. A checkpoint stores the config that produced it; resuming with other values
  for keys that change what is computed is refused unless `--allow-config-change` is given, and an
  allowed change is appended to `config_changes.jsonl` (old -> new, step, date), so `config.json`
  (the config in force now) plus that history say what produced every checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..config import config_from_dict, config_to_dict
from ..errors import CheckpointError, ConfigError, RunError, SdditError, file_fix
from ..runtime import atomic_write, stale_temporaries

LOCK_NAME = "train.lock"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
CHANGES_NAME = "config_changes.jsonl"

# Keys that never change what a run computes (where it writes, how often it logs, checkpoints or
# scores itself, threads, evaluation after training) or change only its speed (compilation, TF32
# matmuls, gradient checkpointing: the same function, rounded differently at most): they may differ
# on resume without a word.
FREE_KEYS = (
    "run_dir",
    "device",
    "train.num_threads",
    "train.cpu_procs",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.fid_every",
    "train.fid_samples",
    "train.fid_ref",
    "train.sample_every",
    "train.sample_classes",
    "train.sample_per_class",
    "train.loggers",
    "train.wandb_project",
    "train.gradnorm_every",
    "train.compile",
    "train.tf32",
    "model.grad_checkpointing",
)
FREE_PREFIXES = ("eval.",)
# Changed on resume without the flag, but recorded: extending a finished run is routine. Schedules
# defined over train.max_steps (lr decay, SD-DiT's teacher momentum and temperature warm-up,
# MaskDiT's unmasked fine-tune) stretch to the new length from the resumed step on.
STRETCH_KEYS = ("train.max_steps",)


def _is_free(key: str) -> bool:
    return key in FREE_KEYS or key.startswith(FREE_PREFIXES)


# ----------------------------------------------------------------------------- the directory and its lock


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or a one-line error for a path that cannot be one."""
    if not str(run_dir).strip():
        raise ConfigError("the run directory is empty: pass --run-dir DIR")
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"run directory {run_dir} is a file, not a directory: pass another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"run directory {run_dir} cannot be created (a part of its path is a file): pass another --run-dir"
        ) from None
    except OSError as e:  # e.g. ENAMETOOLONG, EACCES, ENOSPC: the fix depends on which
        raise RunError(_cannot(e, run_dir, "cannot create the run directory")) from None


def _cannot(e: OSError, run_dir: Path, what: str) -> str:
    """`what RUN_DIR (cause): the fix for that cause, or another --run-dir`."""
    return f"{what} {run_dir} ({e.strerror or e}): {file_fix(e) or 'check that disk'}, or pass another --run-dir"


# Locks this process holds, by resolved lock path: a second Trainer on the same directory in the same
# process (a notebook re-running a cell, a test resuming in place) takes it over from the first one.
_HELD: dict[Path, "RunDirLock"] = {}


class RunDirLock:
    """An exclusive lock on a run directory, held by one process for the length of a run.

    Between processes it is a `flock`, which the kernel drops when its holder dies. Within one
    process the newest Trainer on a directory takes the lock over from an older one it never closed.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._file = None
        self.stale_holder = ""  # what a dead holder left in the file, if anything

    def acquire(self) -> "RunDirLock":
        """Take the lock or raise RunError naming its holder; a lock of a dead process is taken over."""
        make_run_dir(self.run_dir)
        previous = _HELD.get(self.path.resolve())
        if previous is not None:  # held by this very process: take it over
            previous.release()
        try:
            f = open(self.path, "a+")  # a+ creates the file but keeps the holder's line readable
        except OSError as e:
            raise RunError(_cannot(e, self.run_dir, "cannot write in the run directory")) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = holder.split()[1] if holder.startswith("pid ") else "PID"
                raise RunError(
                    f"{self.run_dir} is in use by another `sddit train` ({holder or 'pid unknown'}): wait "
                    f"for it to finish, stop it (kill {pid}), or pass another --run-dir"
                ) from None
            raise RunError(
                f"cannot lock {self.path} ({e.strerror or e}): this filesystem does not support file "
                "locks; use a run directory on a local or NFSv4 disk"
            ) from None
        f.seek(0)
        self.stale_holder = f.read().strip()  # non-empty: the previous holder died without releasing
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
        except OSError as e:
            f.close()
            raise RunError(_cannot(e, self.run_dir, "cannot write in the run directory")) from None
        self._file = f
        _HELD[self.path.resolve()] = self
        return self

    def release(self) -> None:
        """Clear the holder line (a clean exit) and unlock. Idempotent."""
        f, self._file = self._file, None
        if f is None:
            return
        if _HELD.get(self.path.resolve()) is self:
            del _HELD[self.path.resolve()]
        try:
            f.seek(0)
            f.truncate()
        except OSError:
            pass  # a full disk cannot stop the unlock
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    @property
    def held(self) -> bool:
        return self._file is not None


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what writes killed mid-way left (checkpoints, config.json, metrics.jsonl temporaries):
    at ImageNet size each is a multi-GB partial checkpoint. Safe only under the lock, when no other
    process is writing there. Returns what was removed."""
    found = stale_temporaries(run_dir / "checkpoints", "ckpt-*.pt")
    for name in (CONFIG_NAME, METRICS_NAME):
        found += stale_temporaries(run_dir, name)
    for p in found:
        p.unlink(missing_ok=True)
    return found


# ----------------------------------------------------------------------------- metrics


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Drop the lines of metrics.jsonl with a step above `step` (and torn lines a kill left), so the
    steps a resumed run trains again are logged once. Returns the number of lines dropped."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record_step = json.loads(line)["step"]
            ok = record_step <= step
        except (ValueError, KeyError, TypeError):
            ok = False  # a torn last line of a killed run
        if ok:
            keep.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_write(path, "w") as f:
            f.writelines(keep)
    return dropped


# ----------------------------------------------------------------------------- config across resumes


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _normalised(cfg: dict) -> dict:
    """A stored config with the defaults of keys added since it was written (so they do not count
    as changes); the stored dict as is when today's code cannot parse it."""
    try:
        return config_to_dict(config_from_dict(cfg))
    except (SdditError, TypeError, ValueError):
        return cfg


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every key that differs and changes what is computed."""
    a, b = _flatten(_normalised(old)), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not _is_free(k)}


def check_resume_config(old: dict, new: dict, checkpoint: str, allow: bool) -> dict[str, tuple[Any, Any]]:
    """The changes between the config a checkpoint was trained with and this run's, if allowed.

    A different objective is never allowed (the state does not fit); model shape changes fail when
    the weights are loaded. Other changes need `allow` (--allow-config-change), except STRETCH_KEYS.
    """
    changes = config_changes(old, new)
    if "objective" in changes:
        was, now = changes["objective"]
        raise CheckpointError(f"{checkpoint} was trained with objective={was}, not {now}; use another --run-dir")
    refused = {k: v for k, v in changes.items() if k not in STRETCH_KEYS}
    if refused and not allow:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ConfigError(
            f"{checkpoint} was trained with another config ({listed}{more}): resume with the same "
            "values, pass --allow-config-change to continue with the new ones (recorded in "
            f"{CHANGES_NAME}), or use another --run-dir"
        )
    return changes


def record_config_changes(run_dir: str | Path, changes: dict[str, tuple[Any, Any]], step: int, allowed: bool) -> None:
    """Append one line to config_changes.jsonl (not twice for the same resume of the same step)."""
    if not changes:
        return
    path = Path(run_dir) / CHANGES_NAME
    entry = {
        "step": step,
        "changes": {k: [a, b] for k, (a, b) in changes.items()},
        "allowed_by": "--allow-config-change" if allowed else "train.max_steps may change on resume",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if path.is_file():
        lines = path.read_text().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else None
        except ValueError:
            last = None
        if last and last.get("step") == step and last.get("changes") == entry["changes"]:
            return
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def write_config(run_dir: str | Path, cfg: dict) -> None:
    """config.json: the config in force now (atomic, so a kill never leaves half a file)."""
    with atomic_write(Path(run_dir) / CONFIG_NAME, "w") as f:
        f.write(json.dumps(cfg, indent=2))
