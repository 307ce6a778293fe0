"""A clean stop on SIGINT (Ctrl-C) and SIGTERM (what clusters send before they kill a job).

The first signal only sets a flag; the training loop reads it at the next step boundary, saves a
checkpoint and raises `Interrupted` (exit status 130 or 143, one line saying how to resume). So the
step in progress finishes, every file is written whole, and the run resumes bit-identically.
Under torchrun the flag is max-reduced over ranks at every boundary, so all ranks stop at the same
step even when only some of them got the signal (and none waits for the others in a collective).
A second signal stops at once (KeyboardInterrupt); checkpoints are written atomically, so the
previous one is intact.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from .. import distributed as dist

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM request a stop instead of killing the process."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received, 0 if none
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, device: torch.device | str = "cpu") -> int:
        """The signal to stop for (0: go on), the same on every rank. Call at step boundaries."""
        return dist.max_over_ranks(self.signum, device) if dist.is_dist() else self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
