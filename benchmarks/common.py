"""What every benchmark result file records: the command, the git commit, the machine and the date."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """One line naming the hardware the numbers came from."""
    import torch

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


def provenance(argv: list[str]) -> dict:
    """What every committed result file records: the command, the commit, the machine, the date."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": " ".join(["python", os.path.relpath(argv[0], REPO) if os.path.isabs(argv[0]) else argv[0], *argv[1:]]),
        "git_commit": git("rev-parse", "HEAD") + (" (with uncommitted changes)" if dirty and dirty != "unknown" else ""),
        "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run_child(cmd: list[str], what: str) -> dict:
    """Run one measurement in its own process (so its peak memory is its own) and return the JSON
    it prints last; its stderr (progress, errors) passes through."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {what} run failed (its error is printed above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_result(path: str | Path, argv: list[str], **payload) -> None:
    """A result JSON: the provenance record, then the payload."""
    Path(path).write_text(json.dumps({**provenance(argv), **payload}, indent=2))
