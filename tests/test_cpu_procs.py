"""`train.cpu_procs`: `sddit train` as N gloo data-parallel processes it starts itself (no torchrun),
the same training as one process, one-line errors, and a signal that stops every rank at one step."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from sddit import distributed as dist
from sddit.checkpoint import list_checkpoints

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def train_cmd(run, *extra):
    return [
        sys.executable,
        "-m",
        "sddit.cli",
        "train",
        "--config",
        "digits_tiny",
        "--run-dir",
        str(run),
        "--device",
        "cpu",
        "--no-eval",
        "--set",
        "train.num_threads=1",
        *extra,
    ]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_launched_processes_train_as_one(tmp_path):
    steps = [
        "--max-steps",
        "12",
        "--set",
        "train.ckpt_every=0",
        "--set",
        "train.log_every=4",
        "--set",
        "objective=sddit",
    ]
    subprocess.run(train_cmd(tmp_path / "one", *steps), check=True, env=ENV, capture_output=True)
    proc = subprocess.run(
        train_cmd(tmp_path / "two", *steps, "--set", "train.cpu_procs=2"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes on cpu" in proc.stdout and "(16 per process)" in proc.stdout  # rank 0's banner, once
    assert proc.stdout.count("sddit train:") == 1
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [4, 8, 12]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    a, b = (torch.load(list_checkpoints(r)[-1], weights_only=True) for r in (tmp_path / "one", tmp_path / "two"))
    for k in a["model"]:  # gradients averaged over 2 ranks in another order: float32 round-off
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=5e-5, rtol=0)
    assert b["world_size"] == 2


def test_a_bad_setting_is_one_line_from_the_launcher(tmp_path):
    proc = subprocess.run(
        train_cmd(
            tmp_path / "bad",
            "--max-steps",
            "2",
            "--set",
            "train.cpu_procs=2",
            "--set",
            "data.dataset=fashion_mnist",
            "--set",
            f"data.root={tmp_path / 'nowhere'}",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")
    assert "nowhere" in proc.stderr


def test_sigterm_to_the_launcher_stops_every_rank_at_one_saved_step(tmp_path):
    run = tmp_path / "stop"
    proc = subprocess.Popen(
        train_cmd(run, "--max-steps", "100000", "--set", "train.cpu_procs=2", "--set", "train.ckpt_every=0"),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert re.search(r"stopped by SIGTERM at step (\d+): saved", err)
    step = int(re.search(r"stopped by SIGTERM at step (\d+)", err).group(1))
    state = torch.load(list_checkpoints(run)[-1], weights_only=True)
    assert state["step"] == step and set(state["rng"]) == {0, 1}  # both ranks stopped at the same step
    assert "Traceback" not in err


def test_auto_uses_two_processes_on_two_or_more_cores_and_never_under_torchrun(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(dist, "usable_cores", lambda: 2)
    assert dist.local_procs(0, cpu) == 2 and dist.local_procs(1, cpu) == 1 and dist.local_procs(0, cuda) == 1
    assert dist.local_procs(8, cpu) == 2  # never more processes than cores
    monkeypatch.setattr(dist, "usable_cores", lambda: 1)
    assert dist.local_procs(0, cpu) == 1
    monkeypatch.setattr(dist, "usable_cores", lambda: 2)
    monkeypatch.setenv("RANK", "0")
    assert dist.local_procs(0, cpu) == 1
