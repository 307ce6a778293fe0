"""Benchmark scripts run in a seconds-long smoke mode (figures are not asserted: they are not tests)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_time_smoke(tmp_path):
    out = tmp_path / "st.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "ms" not in line
            and "---" not in line] == ["dit", "maskdit", "sddit"]
    rows = json.loads(out.read_text())["rows"]
    assert all(r["ms_per_step"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_dit_speed_smoke(tmp_path):
    out = tmp_path / "ds.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dit_speed.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["official", "ours"] and all(r["ms_per_step"] > 0 for r in rows)
