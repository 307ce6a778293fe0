"""Process-level helpers every layer may use: the device, atomic file writes, wrapped modules, and
the provenance record (command, commit, machine, date) that result files carry."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .errors import ConfigError, underlying_os_error

PACKAGE_DIR = Path(__file__).resolve().parent


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else Apple's MPS, else the CPU; a missing device is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device '{name}' is not valid; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist; "
            "use cuda:0 .. cuda:N-1"
        )
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device '{name}' requested but MPS is not available; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def warn(message: str) -> None:
    """A warning line on stderr (not stdout, where results go), above any progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Temporary files `atomic_path` left for files named like `name` in `folder`: only a killed
    process (kill -9, a node crash) leaves them, since any other failure removes its own."""
    return sorted(p for p in Path(folder).glob(f".{name}.*.tmp") if p.is_file())


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path in `path`'s folder to write to, renamed over `path` on success.

    Readers never see a half-written file, and a failed write (full disk, crash, exception) leaves
    the previous file intact and no temporary behind. `fsync` also flushes the file and the folder
    to disk, for files a crash must not lose (checkpoints). The file gets the mode `open()` would
    give it (0644 under umask 0022), not mkstemp's private 0600, so a team shares what a run writes.
    A write that fails for a reason of the disk (full, read-only, ...) is re-raised as the OSError
    it is, naming `path` rather than the temporary file, whatever the writer raised (torch's zip
    writer and safetensors wrap it), so every caller reports it the same way (`errors.file_problem`).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # after the writer: some (safetensors) replace the file rather than write into it
        os.chmod(tmp, 0o666 & ~current_umask())
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failed = underlying_os_error(e, str(path), tmp) if isinstance(e, Exception) else None
        if failed is None:
            raise
        raise failed from None


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", fsync: bool = False) -> Iterator[IO[Any]]:
    """`atomic_path` as an open file (`mode`): what it promises, for writers that take a file object."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


def current_umask() -> int:
    """The process's umask, read from /proc where Linux offers it (setting it to read it back would
    race with other threads creating files), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unwrap(net: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(net, "module"):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def git_commit() -> dict[str, Any] | None:
    """`{"commit": sha, "dirty": bool}` of the checkout this package runs from, or None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def machine() -> str:
    """One line naming the hardware numbers came from."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU threads visible, torch {torch.__version__} threads {torch.get_num_threads()}"


def provenance(argv: list[str], cwd: str | Path | None = None) -> dict[str, str]:
    """What every result file records: the command, the git commit, the machine and the date."""
    commit = git_commit()
    sha = "unknown" if commit is None else commit["commit"] + (" (with uncommitted changes)" if commit["dirty"] else "")
    prog = argv[0]
    if cwd is not None and os.path.isabs(prog):
        prog = os.path.relpath(prog, cwd)
    return {
        "command": " ".join(["python", prog, *argv[1:]]),
        "git_commit": sha,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
