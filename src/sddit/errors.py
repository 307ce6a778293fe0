"""The errors a user can cause and fix: each carries a one-line message that names the problem and
the way out. The CLI prints them as `error: ...` with exit status 2 (`Interrupted`: 130 or 143),
never as a traceback."""

from __future__ import annotations

import errno
import os
import re
import signal


class SdditError(Exception):
    """Base of the user-facing errors below."""

    exit_status = 2


class ConfigError(SdditError, ValueError):
    """A bad key or value in a config file, a `--set` override or a command-line flag."""


class DataError(SdditError, RuntimeError):
    """Missing, unreadable or inconsistent data (datasets, image folders, sample files, latents)."""


class CheckpointError(SdditError, RuntimeError):
    """A checkpoint that cannot be used."""


class RunError(SdditError, RuntimeError):
    """A training run that cannot go on: its run directory is used by another process or cannot be
    written (full or read-only disk), or its loss stayed non-finite."""


class Interrupted(SdditError):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM (a cluster ending the job) after it saved what it
    had. Exit status 128 + the signal number, as a shell reports a process killed by that signal,
    so job scripts see the run did not finish."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum


# What a user can do when a file cannot be written (or opened), by errno. An errno not listed here
# is a fault of this code or the machine, and keeps its traceback.
_FILE_FIXES = {
    errno.ENOSPC: "free space on that disk, or choose a location on another one",
    errno.EDQUOT: "free space within your disk quota, or choose a location on another disk",
    errno.EFBIG: "the file is larger than that file system allows: choose a location on another disk",
    errno.EROFS: "that file system is read-only: choose a writable location",
    errno.EACCES: "you lack permission there: fix its permissions, or choose another location",
    errno.EPERM: "you lack permission there: fix its permissions, or choose another location",
    errno.EISDIR: "that path is a directory: pass a file path (e.g. a name inside it)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.ENAMETOOLONG: "a name in that path is too long for the file system: choose a shorter one",
    errno.EIO: "the disk reported an I/O error: check it, or choose a location on another disk",
}
# Only writing causes these; the others can come from opening a file to read it.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def file_fix(e: OSError) -> str | None:
    """The fix for a failed file operation that fits its cause; None when the user cannot fix it."""
    return _FILE_FIXES.get(e.errno)


def file_problem(e: OSError) -> str | None:
    """`cannot write PATH (No space left on device): free space ...`: what failed, on which file,
    and the fix that fits the cause; None when the errno is not one a user can fix."""
    fix = file_fix(e)
    if fix is None:
        return None
    verb = "write" if e.errno in _WRITE_ERRNOS else "open"
    return f"cannot {verb} {e.filename or 'a file'} ({e.strerror or errno.errorcode.get(e.errno, e.errno)}): {fix}"


def underlying_os_error(e: BaseException, path: str, temp: str | None = None) -> OSError | None:
    """The OSError behind a failed write of `path`, named after it (not after its temporary `temp`).

    Writers that are not Python file objects hide it: torch's zip writer raises
    `RuntimeError: [enforce fail at inline_container.cc:...]` with the OSError of the failed
    `write` as its context, and safetensors a `SafetensorError: ... (os error 28)`.
    """
    if isinstance(e, SdditError):  # already says what to do
        return None
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            named = e.filename if e.filename not in (None, temp) else path  # another file the writer opened
            return OSError(e.errno, e.strerror, named)
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code), path)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


# What makes each command need less memory.
SMALLER = {
    "train": "lower train.batch_size (or raise train.grad_accum: the same update in smaller pieces) or the model size",
    "sample": "lower --per-class or pass fewer --classes",
    "eval": "lower --batch-size",
    "generate": "lower --batch-size",
    "prepare": "lower --batch-size",
    "export": "free memory (export holds the checkpoint once)",
}


def out_of_memory(e: BaseException) -> bool:
    """MemoryError, or torch's allocation failures (CPU: `DefaultCPUAllocator: can't allocate memory`;
    CUDA: torch.cuda.OutOfMemoryError; MPS: `MPS backend out of memory`)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        ("DefaultCPUAllocator" in text and "allocate" in text) or "out of memory" in text.lower()
    )


def one_line(e: BaseException, command: str = "") -> tuple[str, int] | None:
    """(message, exit status) of an exception that is the user's to fix: an SdditError, Ctrl-C, a
    file that cannot be written for a reason they can change, running out of memory. None for
    anything else (a fault of this code, which keeps its traceback). `command`: `train`, `sample`, ..."""
    if isinstance(e, SdditError):
        return str(e), e.exit_status
    if isinstance(e, KeyboardInterrupt):  # while modules import, outside training's clean stop, or a second Ctrl-C
        return (
            f"interrupted during `sddit{' ' + command if command else ''}`; files are written atomically, so what "
            "was saved is intact: run the same command again (generate: add --resume)",
            130,
        )
    if isinstance(e, OSError) and (problem := file_problem(e)):
        again = " (training resumes from its newest checkpoint)" if command == "train" else ""
        return f"{problem}; then run the same command again{again}", 2
    if out_of_memory(e):
        text = " ".join(str(e).split())[:160] or type(e).__name__
        return (
            f"out of memory during `sddit {command}` ({text}): {SMALLER.get(command, SMALLER['train'])}, or use "
            "a machine with more memory",
            2,
        )
    return None
