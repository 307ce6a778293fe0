"""The errors a user can cause and fix: each carries a one-line message that names the problem and
the way out. The CLI prints them as `error: ...` with exit status 2 (`Interrupted`: 130 or 143),
never as a traceback."""

from __future__ import annotations

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
