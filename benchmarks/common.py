"""What the benchmarks share: the provenance record of every result file (command, git commit, machine,
date: `sddit.runtime.provenance`), one child-process runner and the result-JSON writer.

The scripts import each other as siblings: `python benchmarks/X.py` puts this folder on sys.path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sddit import runtime

REPO = Path(__file__).resolve().parents[1]


def provenance(argv: list[str]) -> dict:
    """What every committed result file records: the command, the commit, the machine, the date."""
    return runtime.provenance(argv, cwd=REPO)


def run_child(cmd: list[str], what: str) -> dict:
    """Run one measurement in its own process (so its peak memory is its own) and return the JSON
    it prints last; its stderr (progress, errors) passes through."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {what} run failed (its error is printed above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_result(path: str | Path, argv: list[str], **payload) -> None:
    """A result JSON: the provenance record, then the payload. Its folder is created: a run of many
    minutes must not end in a missing-directory error with its results unwritten."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**provenance(argv), **payload}, indent=2))
