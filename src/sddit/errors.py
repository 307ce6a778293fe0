"""The errors a user can cause and fix: each carries a one-line message that names the problem and
the way out. The CLI prints them as `error: ...` with exit status 2, never as a traceback."""

from __future__ import annotations


class SdditError(Exception):
    """Base of the user-facing errors below."""


class ConfigError(SdditError, ValueError):
    """A bad key or value in a config file or a `--set` override."""


class DataError(SdditError, RuntimeError):
    """Missing, unreadable or inconsistent data (datasets, image folders, sample files, latents)."""


class CheckpointError(SdditError, RuntimeError):
    """A checkpoint that cannot be used."""
