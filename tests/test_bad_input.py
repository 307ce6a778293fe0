"""Bad input and faults, tried the way a hostile user would (issue 14), through the `sddit` command.

Every case checks: the documented exit status (2 for bad input; 130/143 for SIGINT/SIGTERM), exactly
one line on stderr that names the problem and the fix, no traceback, and, where files existed
before, that they are byte-identical after (or moved, byte-identical, where the case says so).
Progress bars (tqdm, on stderr while a command works) are not messages: `error_line` sets them aside.
Most cases run `sddit.cli.main` in-process on tiny `digits_tiny` runs; the few that need a real
process (its whole stderr, a real signal, a second process holding the lock) run one.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sddit.checkpoint import list_checkpoints
from sddit.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TRAIN = ["train", "--config", "digits_tiny", "--device", "cpu", "--no-eval"]


# ------------------------------------------------------------------------------------------- helpers


# A tqdm progress bar ("train dit:  40%|████   | 8/20 [...]"): progress on stderr, not a message.
PROGRESS = re.compile(r"^[^|]*: +\d+%\|")


def error_line(err: str) -> str:
    """The one message line on stderr, progress bars aside; no traceback."""
    assert "Traceback" not in err, err
    lines = [seg for line in err.split("\n") for seg in line.split("\r") if seg.strip() and not PROGRESS.match(seg)]
    assert len(lines) == 1, lines
    return lines[0]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, the error line or '') of `sddit ARGV` in this process."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, (error_line(err) if rc != 0 else err)


def expect_error(capsys, argv, *says: str, status: int = 2) -> str:
    rc, _, line = run(capsys, argv)
    assert rc == status, line
    assert line.startswith("error: "), line
    for s in says:
        assert s in line, (s, line)
    return line


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file under `roots` with its bytes (symlinks not followed)."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        files.update({p: p.read_bytes() for p in paths})
    return files


def assert_unchanged(before: dict[Path, bytes]) -> None:
    for path, data in before.items():
        assert path.is_file(), f"{path} is gone"
        assert path.read_bytes() == data, f"{path} changed"


class Evil:
    """A pickle that runs a shell command when unpickled with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """Looks like a checkpoint (every key), but its 'ema' would call os.system when loaded."""
    real = torch.load(TRAINED / "checkpoints" / "ckpt-0000010.pt", weights_only=True)
    torch.save({**real, "ema": Evil(marker)}, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def trained(tmp_path_factory):
    """One 20-step digits_tiny DiT run (checkpoints at 10 and 20) that cases copy and damage."""
    global TRAINED
    TRAINED = tmp_path_factory.mktemp("trained") / "run"
    assert main(TRAIN + ["--run-dir", str(TRAINED), "--max-steps", "20"]) == 0
    return TRAINED


TRAINED: Path


def copy_run(tmp_path: Path, keep: tuple[int, ...] = (10, 20)) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(TRAINED, run_dir)
    for p in list_checkpoints(run_dir):
        if int(p.stem.split("-")[1]) not in keep:
            p.unlink()
    return run_dir


@pytest.fixture
def deadline():
    """Fail (instead of hanging CI) if the case takes more than 30 s: for inputs that used to loop."""

    def expired(*_):
        raise TimeoutError("took more than 30 s: an endless loop?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------- 1. crafted checkpoints run nothing


CRAFTED = {
    "sample FILE": lambda ck, run, out: ["sample", ck, "--steps", "1", "--per-class", "1", "--out", out / "g.png"],
    "sample RUN_DIR": lambda ck, run, out: ["sample", run, "--steps", "1", "--per-class", "1", "--out", out / "g.png"],
    "eval FILE": lambda ck, run, out: ["eval", ck, "--num-samples", "2", "--steps", "1"],
    "generate FILE": lambda ck, run, out: ["generate", ck, "--out", out / "gen", "--num-samples", "2", "--steps", "1"],
    "train resume": lambda ck, run, out: TRAIN + ["--run-dir", run, "--max-steps", "30"],
}


@pytest.mark.parametrize("command", CRAFTED)
def test_crafted_checkpoint_is_refused_and_runs_nothing(command, tmp_path, capsys):
    run_dir = copy_run(tmp_path, keep=(10,))
    marker = tmp_path / "MARKER"
    ckpt = crafted_checkpoint(run_dir / "checkpoints" / "ckpt-0000020.pt", marker)  # the newest
    before = snapshot(run_dir)
    expect_error(
        capsys,
        CRAFTED[command](ckpt, run_dir, tmp_path),
        "ckpt-0000020.pt was refused unread",
        "posix.system",
        "delete the file",
    )
    assert not marker.exists()
    assert_unchanged(before)
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "gen").exists()


def test_crafted_checkpoint_in_a_real_process(tmp_path):
    """The whole stderr of a real `sddit sample` process is the one line (no warnings around it)."""
    marker = tmp_path / "MARKER"
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", marker)
    proc = subprocess.run(
        [sys.executable, "-m", "sddit.cli", "sample", str(ckpt), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.count("\n") == 1 and "was refused unread" in proc.stderr, proc.stderr


# ------------------------------------------------------------- 2. unreadable checkpoints: never lost


def test_all_unreadable_checkpoints_stop_instead_of_restarting(tmp_path, capsys):
    """Two truncated files, nothing readable: an error naming them, no step-0 restart, nothing deleted."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    good = (TRAINED / "checkpoints" / "ckpt-0000020.pt").read_bytes()
    (run_dir / "checkpoints" / "ckpt-0100000.pt").write_bytes(good[:1000])
    (run_dir / "checkpoints" / "ckpt-0200000.pt").write_bytes(good[:5000])
    before = snapshot(run_dir)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir],
        "none is readable",
        "ckpt-0200000.pt, ckpt-0100000.pt",
        "restore a good copy",
        "move them out of checkpoints/",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-0100000.pt", "ckpt-0200000.pt"]
    assert not (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("junk", ["text", "truncated", "empty", "not a checkpoint"])
def test_unreadable_newest_is_quarantined_and_the_readable_one_kept(junk, tmp_path, capsys):
    """Documented: exit 0, the junk moves (byte-identical) to checkpoints/unreadable/, the run resumes
    from the readable checkpoint, and pruning never deletes that one in favour of the junk."""
    run_dir = copy_run(tmp_path, keep=(10,))
    bad = run_dir / "checkpoints" / "ckpt-0000020.pt"
    good = (run_dir / "checkpoints" / "ckpt-0000010.pt").read_bytes()
    if junk == "text":
        bad.write_text("not a checkpoint at all\n")
    elif junk == "truncated":
        bad.write_bytes((TRAINED / "checkpoints" / "ckpt-0000020.pt").read_bytes()[:2000])
    elif junk == "empty":
        bad.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, bad)  # a torch file without model/ema/config
    junk_bytes = bad.read_bytes()
    rc, out, err = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "20"])
    assert rc == 0
    assert "ckpt-0000020.pt" in err and "moved it to" in err and "resumed from" in out and "at step 10" in out
    assert (run_dir / "checkpoints" / "unreadable" / "ckpt-0000020.pt").read_bytes() == junk_bytes
    # keep_last=2: the readable step-10 checkpoint (untouched) and the new step-20 one; the junk is not counted
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000010.pt", "ckpt-0000020.pt"]
    assert (run_dir / "checkpoints" / "ckpt-0000010.pt").read_bytes() == good
    assert torch.load(run_dir / "checkpoints" / "ckpt-0000020.pt", weights_only=True)["step"] == 20
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_retention_never_deletes_for_a_file_with_a_higher_step(tmp_path, capsys):
    """Pruning removes only checkpoints OLDER than the one just written: an unreadable file with a
    higher step, and the readable checkpoint below it, both survive (keep_last=1)."""
    from sddit.checkpoint import save_checkpoint

    run_dir = copy_run(tmp_path, keep=(10,))
    odd = run_dir / "checkpoints" / "ckpt-0500000.pt"
    odd.write_text("appeared during the run")
    state = torch.load(run_dir / "checkpoints" / "ckpt-0000010.pt", weights_only=True)
    save_checkpoint({**state, "step": 15}, run_dir, 15, keep_last=2)
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000010.pt", "ckpt-0000015.pt", "ckpt-0500000.pt"]
    save_checkpoint({**state, "step": 16}, run_dir, 16, keep_last=1)
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000016.pt", "ckpt-0500000.pt"]


def test_sampling_skips_an_unreadable_newest_checkpoint_without_moving_it(tmp_path, capsys):
    run_dir = copy_run(tmp_path)
    bad = run_dir / "checkpoints" / "ckpt-0000020.pt"
    bad.write_bytes(bad.read_bytes()[:3000])
    before = snapshot(run_dir)
    rc, out, err = run(capsys, ["sample", run_dir, "--steps", "1", "--per-class", "1", "--out", tmp_path / "g.png"])
    assert rc == 0 and "falling back to ckpt-0000010.pt" in err and (tmp_path / "g.png").is_file()
    assert_unchanged(before)


# ------------------------------------------------------------------------- 3. one run per directory

# A real `sddit train` that stops in its third step until it is killed (or RELEASE appears).
HOLDING_TRAIN = """
import os, sys, time
import sddit.train.trainer as trainer
real = trainer.learning_rate
def lr(cfg, step):
    if step == 2:
        print("holding", flush=True)
        while not os.path.exists(os.environ["RELEASE"]):
            time.sleep(0.05)
    return real(cfg, step)
trainer.learning_rate = lr
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_second_train_on_a_running_run_dir_is_refused_then_a_dead_lock_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDING_TRAIN, *TRAIN, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**ENV, "RELEASE": str(tmp_path / "RELEASE")},
    )
    try:
        # mid-run, holding the lock (after the start-up banner)
        assert any(line.strip() == "holding" for line in iter(first.stdout.readline, ""))
        before = snapshot(run_dir)
        expect_error(
            capsys,
            TRAIN + ["--run-dir", run_dir, "--max-steps", "30"],
            f"pid {first.pid}",
            "in use by another `sddit train`",
            f"kill {first.pid}",
            "another --run-dir",
        )
        assert_unchanged(before)
    finally:
        first.kill()  # SIGKILL: the first run cannot release; its pid stays in the file
        first.wait()
    assert f"pid {first.pid}" in (run_dir / "train.lock").read_text()
    rc, out, _ = run(capsys, TRAIN + ["--run-dir", run_dir])
    assert rc == 0 and f"took over the lock of {run_dir} left by a process that is gone (pid {first.pid}" in out
    assert (run_dir / "train.lock").read_text() == ""  # released on exit
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        5,
        10,
        15,
        20,
    ]


# ------------------------------------------------------------------------- config and command line


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


CONFIG_CASES = {
    # id: (argv after TRAIN, files to write {name: text}, what the line must say)
    "base cycle: a preset naming itself": (
        ["--config", "{a}"],
        {"a": "base: {a}\ntrain:\n  lr: 1.0e-3\n"},
        ["base: cycle", "a -> a", "remove the base: key"],
    ),
    "base cycle: A -> B -> A": (
        ["--config", "{a}"],
        {"a": "base: {b}\n", "b": "base: {a}\n"},
        ["base: cycle", "a -> b -> a", "remove the base: key"],
    ),
    "malformed YAML file": (
        ["--config", "{a}"],
        {"a": "train:\n  lr: [1e-3\n  batch_size: 8\n"},
        ["a.yaml is not valid YAML", "line", "fix the file"],
    ),
    "malformed --set value": (["--set", "train.lr=[1e-3"], {}, ["not valid YAML", "quote it"]),
    "train.lr=nan": (["--set", "train.lr=nan"], {}, ["train.lr=nan is not valid", "a finite number > 0"]),
    "train.lr negative": (["--set", "train.lr=-1e-3"], {}, ["train.lr=-0.001 is not valid", "a finite number > 0"]),
    "train.log_every=0": (["--set", "train.log_every=0"], {}, ["train.log_every=0 is not valid", "an integer >= 1"]),
    "model.patch_size=0": (["--set", "model.patch_size=0"], {}, ["model.patch_size=0 is not valid", ">= 1"]),
    "num_heads not dividing the width": (
        ["--set", "model.num_heads=5"],
        {},
        ["hidden_size=32 is not divisible by model.num_heads=5", "choose heads that divide the width"],
    ),
    "--device tpu": (["--device", "tpu"], {}, ["device='tpu' is not valid", "use auto, cpu, cuda"]),
    '--run-dir ""': (["--run-dir", ""], {}, ["run_dir is empty", "pass --run-dir DIR"]),
    "teacher block past the encoder": (
        ["--set", "objective=sddit", "--set", "sddit.teacher_head_block=9"],
        {},
        ["sddit.teacher_head_block=9 is past the encoder's", "set it to at most"],
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_errors(case, tmp_path, capsys, monkeypatch, deadline):
    argv, files, says = CONFIG_CASES[case]
    names = {k: str(tmp_path / f"{k}.yaml") for k in ("a", "b")}
    for name, text in files.items():
        _yaml(tmp_path, name, text.format(**names))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text('{"mine": true}')  # `--run-dir ""` used to overwrite it
    before = snapshot(tmp_path)
    expect_error(capsys, TRAIN + [a.format(**names) for a in argv], *says)
    assert_unchanged(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)  # nothing new either


def test_run_dir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    expect_error(capsys, TRAIN + ["--run-dir", path], "notes.txt is a file", "pass another --run-dir")
    assert path.read_text() == "mine"


# ------------------------------------------------------------------------- 6. config changes on resume


def test_config_change_on_resume_is_refused(tmp_path, capsys):
    run_dir = copy_run(tmp_path)
    before = snapshot(run_dir)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir, "--max-steps", "30", "--set", "train.batch_size=16", "--set", "train.lr=2e-3"],
        "train.batch_size 32 -> 16",
        "train.lr 0.001 -> 0.002",
        "--allow-config-change",
        "config_changes.jsonl",
        "another --run-dir",
    )
    assert_unchanged(before)


def test_allowed_config_change_and_longer_run_are_recorded(tmp_path, capsys):
    run_dir = copy_run(tmp_path)
    # keys that never change the computation: no flag, no record
    rc, _, _ = run(capsys, TRAIN + ["--run-dir", run_dir, "--set", "train.log_every=10", "--set", "eval.steps=3"])
    assert rc == 0 and not (run_dir / "config_changes.jsonl").exists()
    rc, out, _ = run(
        capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "25", "--set", "train.lr=2e-3", "--allow-config-change"]
    )
    assert rc == 0 and "config changed on resume" in out
    rc, _, _ = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "30", "--set", "train.lr=2e-3"])
    assert rc == 0  # extending a run needs no flag; the lr is already the stored one
    history = [json.loads(line) for line in (run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [20, 25]
    assert history[0]["changes"] == {"train.lr": [0.001, 0.002], "train.max_steps": [20, 25]}
    assert history[0]["allowed_by"] == "--allow-config-change" and history[0]["date"]
    assert history[1]["changes"] == {"train.max_steps": [25, 30]}
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 0.002
    assert torch.load(list_checkpoints(run_dir)[-1], weights_only=True)["config"]["train"]["lr"] == 0.002


# ------------------------------------------------------------------ 5. metrics.jsonl after a resume


def test_resume_after_a_truncated_newest_checkpoint_logs_each_step_once(tmp_path, capsys):
    run_dir = copy_run(tmp_path)
    newest = run_dir / "checkpoints" / "ckpt-0000020.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    rc, out, _ = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "20"])
    assert rc == 0 and "dropped 2 line(s) of metrics.jsonl after step 10" in out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    original = [json.loads(line) for line in (TRAINED / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [r["loss"] for r in original]  # exact resume: the same losses


# ------------------------------------------------------------------------- 9. Ctrl-C and SIGTERM


def _signal_at_step(monkeypatch, signum: int, step: int) -> None:
    """Deliver `signum` to this process while step `step` is being computed."""
    from sddit.train import trainer

    real = trainer.learning_rate

    def lr_then_signal(cfg, s):
        if s == step:
            signal.raise_signal(signum)
        return real(cfg, s)

    monkeypatch.setattr(trainer, "learning_rate", lr_then_signal)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_resumes_bit_identically(signum, status, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    handler_before = signal.getsignal(signum)
    _signal_at_step(monkeypatch, signum, 6)  # arrives during step 7 (steps count from 0): it finishes, then stop
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir, "--max-steps", "20"],
        f"stopped by {signal.Signals(signum).name} at step 7",
        "ckpt-0000007.pt",
        "run the same command again to resume",
        status=status,
    )
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000007.pt"]
    assert signal.getsignal(signum) == handler_before  # the handler is only ours while training
    monkeypatch.undo()
    rc, out, _ = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "20"])
    assert rc == 0 and "at step 7" in out
    a = torch.load(TRAINED / "checkpoints" / "ckpt-0000020.pt", weights_only=True)
    b = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


SIGTERM_CHILD = """
import os, signal, sys
import sddit.train.trainer as trainer
real = trainer.learning_rate
def lr(cfg, step):
    if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # what a cluster sends before it kills the job
    return real(cfg, step)
trainer.learning_rate = lr
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_in_a_real_process(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_CHILD, *TRAIN, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert "stopped by SIGTERM at step 4" in line and "ckpt-0000004.pt" in line and "to resume" in line
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000004.pt"]


SIGTERM_ONE_RANK = """
import os, signal, sys
import torch.distributed as dist
import sddit.train.trainer as trainer
real = trainer.learning_rate
def lr(cfg, step):
    if step == 3 and dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 gets it: all ranks must still stop together
    return real(cfg, step)
trainer.learning_rate = lr
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_reaching_one_torchrun_rank_stops_every_rank(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "child.py"
    script.write_text(SIGTERM_ONE_RANK)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--nnodes=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(script),
            *TRAIN,
            "--run-dir",
            str(run_dir),
            "--set",
            "train.num_threads=1",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("stopped by SIGTERM at step 4") == 2, proc.stderr[-3000:]  # both ranks, same step
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000004.pt"]
    state = torch.load(run_dir / "checkpoints" / "ckpt-0000004.pt", weights_only=True)
    assert state["step"] == 4 and sorted(state["rng"]) == [0, 1]


def test_ctrl_c_outside_the_training_loop(capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("sddit.cli.load_config", interrupted)
    expect_error(capsys, TRAIN, "interrupted during `sddit train`", "run the same command again", status=130)


# ------------------------------------------------------------------------- full and read-only disks


def _failing(err: int, filename: str):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err), filename)

    return fail


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_while_saving_a_checkpoint(err, tmp_path, capsys, monkeypatch):
    from sddit import checkpoint

    run_dir = copy_run(tmp_path, keep=(10,))
    before = snapshot(run_dir / "checkpoints")

    def partial_then_fail(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(checkpoint.torch, "save", partial_then_fail)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir, "--max-steps", "20"],
        os.strerror(err),
        "ckpt-0000010.pt, is intact",
        "re-run the same command to resume",
    )
    assert_unchanged(before)
    assert not list((run_dir / "checkpoints").glob(".ckpt-*"))  # no temporary file left


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_elsewhere_in_the_run_dir(err, tmp_path, capsys, monkeypatch):
    """The lock file cannot be created (read-only disk), or config.json cannot be written (full)."""
    from sddit.train import run_dir as rundir

    run_dir = copy_run(tmp_path)
    before = snapshot(run_dir)
    if err == errno.EROFS:
        monkeypatch.setattr(rundir, "open", _failing(err, str(run_dir / "train.lock")), raising=False)  # 1st write
        says = [
            "cannot write in the run directory",
            "(Read-only file system): that file system is read-only",
            "choose a writable location, or pass another --run-dir",
        ]
    else:
        monkeypatch.setattr(rundir, "write_config", _failing(err, str(run_dir / "config.json")))
        says = ["cannot write", "config.json", "No space left on device", "free space", "run the same command again"]
    expect_error(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "30"], *says)
    assert_unchanged(before)


# ------------------------------------------------------------------------------------------ data


def _gz(path: Path, data: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(data)


def test_gz_with_a_truncated_header(tmp_path, capsys):
    root = tmp_path / "fmnist"
    root.mkdir()
    _gz(root / "train-images-idx3-ubyte.gz", bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big"))  # 3 dims, 1 given
    _gz(root / "train-labels-idx1-ubyte.gz", bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([1, 2]))
    before = snapshot(root)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", tmp_path / "run", "--set", "data.dataset=fashion_mnist", "--set", f"data.root={root}"],
        "train-images-idx3-ubyte.gz is truncated",
        "re-download it",
    )
    assert_unchanged(before)


def test_latent_manifest_without_counts_entries(tmp_path, capsys):
    root = tmp_path / "latents"
    root.mkdir()
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "format": "sddit-latents",
                "latent_shape": [4, 4, 4],
                "class_names": ["a"],
                "scale_factor": 0.18215,
                "shards": [],
                "counts": {"images": 0},
                "resolution": 32,
                "vae": "x",
            }
        )
    )
    before = snapshot(root)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", tmp_path / "run", "--set", "data.dataset=latents", "--set", f"data.root={root}"],
        "lacks counts.entries",
        "re-run `sddit prepare",
    )
    assert_unchanged(before)


@pytest.mark.parametrize("links", [1, 2])
def test_prepare_follows_symlinks_without_cycles(links, tmp_path, capsys, deadline):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = tmp_path / "vae"
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    ).save_pretrained(vae)
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(images / "a" / "one.png")
    for k in range(links):
        os.symlink(".", images / "a" / f"loop{k}")  # `ln -s . loopK` inside the class folder
    rc, out, _ = run(
        capsys,
        [
            "prepare",
            images,
            tmp_path / "out",
            "--vae",
            vae,
            "--image-size",
            "8",
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "0",
        ],
    )
    assert rc == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["images"] == 1


# ------------------------------------------------------------------------------------------ eval


def _pngs(folder: Path, n: int, size: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _bomb(path: Path) -> None:
    """A valid PNG header claiming 30000 x 30000 pixels, with a few bytes of data: PIL's bomb check."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _npz(path: Path, n_declared: int, n_stored: int) -> Path:
    """An uncompressed .npz whose arr_0 header says n_declared 8x8x3 images and holds n_stored."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (n_declared, 8, 8, 3)}
    )
    data = np.random.default_rng(0).integers(0, 256, (n_stored, 8, 8, 3), dtype=np.uint8).tobytes()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("arr_0.npy", header.getvalue() + data)
    return path


def _bad_crc(path: Path) -> Path:
    _npz(path, 4, 4)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # one flipped byte in arr_0's data: the zip CRC no longer matches
    path.write_bytes(bytes(raw))
    return path


def _stats(path: Path, dim: int, value: float = 0.0) -> Path:
    np.savez(path, mu=np.full(dim, value, np.float32), sigma=np.full((dim, dim), value, np.float16) + np.eye(dim))
    return path


EVAL_CASES = {
    # id: (make the inputs -> argv after "eval", what the line must say)
    "decompression-bomb PNG": (
        lambda t: ["--samples", _bomb_folder(t), "--ref", _pngs(t / "ref", 4)],
        ["DecompressionBombError", "remove it from the folder"],
    ),
    "npz with a bad CRC": (
        lambda t: ["--samples", _bad_crc(t / "s.npz"), "--ref", _pngs(t / "ref", 4)],
        ["s.npz is truncated or corrupt", "CRC", "regenerate or copy it again"],
    ),
    "npz with short data": (
        lambda t: ["--samples", _npz(t / "s.npz", 10, 6), "--ref", _pngs(t / "ref", 4)],
        ["s.npz is truncated", "declares 10 images", "regenerate or copy it again"],
    ),
    "--ref stats of the wrong size": (
        lambda t: ["--samples", _pngs(t / "s", 4), "--ref", _stats(t / "r.npz", 64)],
        ["mu/sigma have shapes (64,) and (64, 64)", "expected (2048,)", "computed with the same Inception"],
    ),
    "--ref stats full of NaN": (
        lambda t: ["--samples", _pngs(t / "s", 4), "--ref", _stats(t / "r.npz", 2048, np.nan)],
        ["contain NaN or inf", "recompute the reference statistics"],
    ),
    "--num-samples 0": (lambda t: [TRAINED, "--num-samples", "0"], ["--num-samples 0 is not valid", ">= 2"]),
    "--num-samples negative": (lambda t: [TRAINED, "--num-samples", "-5"], ["--num-samples -5 is not valid", ">= 2"]),
    "--steps 0": (lambda t: [TRAINED, "--steps", "0"], ["--steps 0 is not valid", ">= 1"]),
    "--json into a missing folder": (
        lambda t: [TRAINED, "--json", t / "missing" / "r.json"],
        ["--json", "does not exist", "create it or choose another path"],
    ),
    "--device tpu": (lambda t: [TRAINED, "--device", "tpu"], ["device 'tpu' is not valid"]),
    "torch file that is not a checkpoint": (
        lambda t: [_weights_only_file(t / "w.pt")],
        ["w.pt is not an sddit checkpoint", "no 'config', 'ema' entry", "checkpoint written by `sddit train`"],
    ),
}


def _bomb_folder(t: Path) -> Path:
    folder = _pngs(t / "s", 3)
    _bomb(folder / "3.png")
    return folder


def _weights_only_file(path: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    return path


@pytest.mark.parametrize("case", EVAL_CASES)
def test_eval_errors(case, tmp_path, capsys):
    make, says = EVAL_CASES[case]
    argv = make(tmp_path)
    before = snapshot(tmp_path)
    expect_error(capsys, ["eval", *argv, "--batch-size", "4"], *says)
    assert_unchanged(before)


# ------------------------------------------------------------------------------- sample and generate


def test_sample_per_class_zero(tmp_path, capsys):
    expect_error(
        capsys,
        ["sample", TRAINED, "--per-class", "0", "--out", tmp_path / "g.png"],
        "--per-class 0 is not valid",
        ">= 1",
    )
    assert not (tmp_path / "g.png").exists()


NOT_CHECKPOINTS = {
    "weights only": ({"model": {"w": torch.zeros(2)}}, "no 'config', 'ema' entry"),
    "a list": ([torch.zeros(2)], "it holds a list, not a dict"),
    "a future format": ({"config": {}, "ema": {}, "version": 99}, "format 99; this code reads formats 1 to"),
    "config not a dict": ({"config": [1], "ema": {}}, "its 'config' is a list, not a dict"),
}


@pytest.mark.parametrize("case", NOT_CHECKPOINTS)
def test_sample_torch_file_that_is_not_a_checkpoint(case, tmp_path, capsys):
    obj, says = NOT_CHECKPOINTS[case]
    torch.save(obj, tmp_path / "w.pt")
    before = snapshot(tmp_path)
    expect_error(
        capsys,
        ["sample", tmp_path / "w.pt", "--out", tmp_path / "g.png"],
        "w.pt is not an sddit checkpoint",
        says,
        "pass a checkpoint written by `sddit train`",
    )
    assert_unchanged(before)
    assert not (tmp_path / "g.png").exists()


GEN = ["--num-samples", "4", "--steps", "2", "--batch-size", "2", "--cfg-scale", "1"]


def test_generate_does_not_overwrite_an_earlier_npz(tmp_path, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"earlier samples")
    (out / "samples.json").write_text('{"earlier": true}')
    before = snapshot(out)
    expect_error(
        capsys,
        ["generate", TRAINED, "--out", out, *GEN],
        "already holds samples.npz and samples.json",
        "choose an empty --out",
    )
    assert_unchanged(before)


def test_generate_resume_over_a_zero_byte_png(tmp_path, capsys):
    """Documented: --resume generates the empty PNG again (exit 0); the .npz equals a clean run's."""
    out = tmp_path / "gen"
    assert run(capsys, ["generate", TRAINED, "--out", out, *GEN])[0] == 0
    clean = np.load(out / "samples.npz")["arr_0"]
    (out / "images" / "000001.png").write_bytes(b"")
    assert run(capsys, ["generate", TRAINED, "--out", out, *GEN, "--resume"])[0] == 0
    assert Image.open(out / "images" / "000001.png").size == (8, 8)
    assert np.array_equal(np.load(out / "samples.npz")["arr_0"], clean)


def test_generate_num_samples_zero(tmp_path, capsys):
    expect_error(
        capsys,
        ["generate", TRAINED, "--out", tmp_path / "g", "--num-samples", "0"],
        "--num-samples 0 is not valid",
        ">= 1",
    )
    assert not (tmp_path / "g").exists()


def test_lock_is_released_when_a_resume_is_refused(tmp_path, capsys):
    """A refused resume (here a config change) must not leave the directory locked for the next try."""
    run_dir = copy_run(tmp_path)
    expect_error(capsys, TRAIN + ["--run-dir", run_dir, "--set", "train.lr=5e-3"], "--allow-config-change")
    assert run(capsys, TRAIN + ["--run-dir", run_dir])[0] == 0


def test_a_second_trainer_in_the_same_process_takes_the_lock_over(tmp_path):
    """A notebook re-running a cell (or a test resuming in place) builds a new Trainer on the same run
    directory without closing the old one: the lock passes to the new one instead of refusing."""
    from sddit.config import load_config
    from sddit.train import Trainer

    cfg = load_config("digits_tiny", [f"run_dir={tmp_path / 'run'}", "train.max_steps=2", "train.ckpt_every=0"])
    first = Trainer(cfg, log=lambda *a: None)
    second = Trainer(cfg, log=lambda *a: None)
    assert second.lock.held and not first.lock.held
    assert f"pid {os.getpid()}" in (tmp_path / "run" / "train.lock").read_text()
    second.close()
    assert (tmp_path / "run" / "train.lock").read_text() == ""


# ------------------------------------------------------------- issue 24: nothing lost, nothing unexplained


ENOSPC = os.strerror(errno.ENOSPC)


def _full_after(limit: int):
    """torch.save as on a disk that fills after `limit` bytes: torch's own zip writer then raises
    `RuntimeError: [enforce fail at inline_container.cc:...]` around the OSError, as on a real full disk."""
    real = torch.save

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > limit:
                raise OSError(errno.ENOSPC, ENOSPC)
            self.n += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    return lambda obj, f, *a, **k: real(obj, Full(f), *a, **k)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs at tmp_path/disk (needs root and a kernel that lets this process mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root; the "
            "monkeypatched case of the same failure runs everywhere"
        )
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` until about `leave` bytes are free."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_full_disk_in_torchs_zip_writer_while_saving_a_checkpoint(tmp_path, capsys, monkeypatch):
    """Item 4: torch raises RuntimeError (not OSError) on a full disk; still one line naming the file."""
    from sddit import checkpoint

    run_dir = copy_run(tmp_path, keep=(10,))
    before = snapshot(run_dir / "checkpoints")
    monkeypatch.setattr(checkpoint.torch, "save", _full_after(4096))
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir, "--max-steps", "20"],
        "step-20 checkpoint was not saved",
        f"cannot write {run_dir / 'checkpoints' / 'ckpt-0000020.pt'} ({ENOSPC})",
        "free space on that disk",
        "ckpt-0000010.pt, is intact",
        "re-run the same command to resume",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-0000010.pt"]  # no temporary


def test_full_disk_while_saving_a_checkpoint_on_a_real_tmpfs(tiny_disk, capsys):
    run_dir = tiny_disk / "run"
    shutil.copytree(copy_run(tiny_disk.parent, keep=(10,)), run_dir)
    _fill(tiny_disk, (run_dir / "checkpoints" / "ckpt-0000010.pt").stat().st_size // 2)
    before = snapshot(run_dir / "checkpoints")
    expect_error(
        capsys,
        TRAIN + ["--run-dir", run_dir, "--max-steps", "20"],
        "step-20 checkpoint was not saved",
        f"({ENOSPC})",
        "ckpt-0000020.pt",
        "ckpt-0000010.pt, is intact",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-0000010.pt"]


def test_full_disk_while_exporting(tmp_path, capsys, monkeypatch):
    """Item 4: safetensors raises SafetensorError (not OSError) on a full disk."""
    from safetensors import SafetensorError

    import safetensors.torch

    def full(*a, **k):
        raise SafetensorError(f"Error while serializing: I/O error: {ENOSPC} (os error {errno.ENOSPC})")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "release"
    expect_error(
        capsys,
        ["export", TRAINED, "--out", out],
        f"cannot write {out / 'model.safetensors'} ({ENOSPC})",
        "free space on that disk",
        "run the same command again",
    )
    assert list(out.iterdir()) == []


def test_full_disk_while_exporting_on_a_real_tmpfs(tiny_disk, capsys):
    _fill(tiny_disk, 16384)
    out = tiny_disk / "release"
    expect_error(
        capsys,
        ["export", TRAINED, "--out", out],
        f"cannot write {out / 'model.safetensors'} ({ENOSPC})",
        "free space on that disk",
    )
    assert list(out.iterdir()) == []


KILLED_MID_WRITE = """
import os, signal, sys
import torch

def save(obj, f, *a, **k):  # half a checkpoint on disk, then kill -9
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_partial_checkpoint_of_a_killed_write_is_removed_when_the_run_starts(tmp_path, capsys):
    """Item 9: kill -9 inside a checkpoint write leaves .ckpt-*.tmp; the next run removes it, and
    only it (a user's file of another name stays), then resumes."""
    run_dir = copy_run(tmp_path, keep=(10,))
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, *TRAIN, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = list((run_dir / "checkpoints").glob(".ckpt-0000020.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].read_bytes() == b"half a checkpoint"
    mine = run_dir / "checkpoints" / ".ckpt-notes.tmp"  # not a name atomic writes use
    mine.write_text("mine")
    before = snapshot(run_dir / "checkpoints" / "ckpt-0000010.pt", mine)
    rc, out, err = run(capsys, TRAIN + ["--run-dir", run_dir])
    assert rc == 0 and f"removed 1 partial file(s) ({partial[0].name})" in out and "killed" in out
    assert not partial[0].exists()
    assert_unchanged(before)
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000010.pt", "ckpt-0000020.pt"]


def test_resume_warnings_go_to_stderr(tmp_path, capsys):
    run_dir = copy_run(tmp_path)
    newest = run_dir / "checkpoints" / "ckpt-0000020.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    rc, out, err = run(capsys, TRAIN + ["--run-dir", run_dir])
    assert rc == 0 and "resumed from" in out
    assert "warning: checkpoint" in err and "ckpt-0000020.pt is unreadable" in err and "warning:" not in out


@pytest.mark.parametrize(
    "err,says,not_says",
    [
        (errno.ENOSPC, ["cannot write", "(No space left on device)", "free space on that disk"], ["directory"]),
        (errno.EISDIR, ["cannot open", "(Is a directory)", "is a directory: pass a file path"], ["free space"]),
        (
            errno.ENAMETOOLONG,
            ["cannot open", "(File name too long)", "too long", "choose a shorter one"],
            ["free space"],
        ),
        (errno.EACCES, ["cannot open", "(Permission denied)", "fix its permissions"], ["free space"]),
    ],
)
def test_the_fix_fits_the_cause_of_a_failed_write(err, says, not_says, tmp_path, capsys, monkeypatch):
    """Item 9: every failed write names its file, and `Is a directory` is not told to free space."""
    from sddit.train import run_dir as rundir

    run_dir = copy_run(tmp_path)
    monkeypatch.setattr(rundir, "write_config", _failing(err, str(run_dir / "config.json")))
    line = expect_error(
        capsys, TRAIN + ["--run-dir", run_dir], str(run_dir / "config.json"), *says, "run the same command again"
    )
    assert not any(s in line for s in not_says), line


def _ckpt_state(step: int) -> dict:
    return torch.load(TRAINED / "checkpoints" / f"ckpt-{step:07d}.pt", weights_only=True)


STEP_CASES = {
    # id: (damage the run directory (checkpoints 10 and 20) -> the name of the file that lies, what the warning says)
    "newer name, step -5": (
        lambda d: torch.save({**_ckpt_state(20), "step": -5}, d / "ckpt-0000030.pt") or "ckpt-0000030.pt",
        "holds step -5, outside [0, 20]",
    ),
    "step 10**15 named for it": (
        lambda d: torch.save({**_ckpt_state(20), "step": 10**15}, d / f"ckpt-{10**15}.pt") or f"ckpt-{10**15}.pt",
        f"holds step {10**15}, outside [0, 20]",
    ),
    "ckpt-10 renamed to ckpt-99": (
        lambda d: (d / "ckpt-0000010.pt").rename(d / "ckpt-0000099.pt") or "ckpt-0000099.pt",
        "holds step 10 but is named for step 99",
    ),
}


@pytest.mark.parametrize("case", STEP_CASES)
def test_a_checkpoint_whose_step_lies_is_quarantined_and_nothing_is_lost(case, tmp_path, capsys):
    """Item 1: a file whose stored step disagrees with its name or lies outside [0, max_steps] is
    moved (byte-identical) to checkpoints/unreadable/, the run resumes from the real newest one, and
    no good checkpoint is overwritten or pruned."""
    run_dir = copy_run(tmp_path)
    ckpts = run_dir / "checkpoints"
    damage, says = STEP_CASES[case]
    liar = ckpts / damage(ckpts)
    lie = liar.read_bytes()
    before = snapshot(*(p for p in list_checkpoints(run_dir) if p != liar))
    rc, out, err = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "20"])
    assert rc == 0, err
    assert f"{liar.name} cannot be trusted ({'it ' + says}" in err and "moved it to" in err, err
    assert "at step 20" in out and "saved" not in out  # nothing left to train: nothing rewritten
    assert (ckpts / "unreadable" / liar.name).read_bytes() == lie
    assert_unchanged(before)


def test_a_lying_checkpoint_is_refused_by_sample(tmp_path, capsys):
    path = tmp_path / "ckpt-0000099.pt"
    shutil.copy(TRAINED / "checkpoints" / "ckpt-0000010.pt", path)
    before = snapshot(tmp_path)
    expect_error(
        capsys,
        ["sample", path, "--out", tmp_path / "g.png"],
        "ckpt-0000099.pt cannot be trusted",
        "holds step 10 but is named for step 99",
        "use another checkpoint",
    )
    assert_unchanged(before)


def test_retention_never_deletes_a_checkpoint_whose_real_step_is_newer(tmp_path, capsys):
    """Item 1: an older-NAMED file holding a later step (here ckpt-3 holding step 20) is not pruned
    by name when the run saves step 25: it moves, byte-identical, to checkpoints/unreadable/."""
    run_dir = copy_run(tmp_path, keep=(10,))
    renamed = run_dir / "checkpoints" / "ckpt-0000003.pt"
    shutil.copy(TRAINED / "checkpoints" / "ckpt-0000020.pt", renamed)
    data = renamed.read_bytes()
    rc, out, err = run(capsys, TRAIN + ["--run-dir", run_dir, "--max-steps", "30", "--set", "train.ckpt_every=5"])
    assert rc == 0, err
    assert "ckpt-0000003.pt holds step 20, not the step of its name: moved it to" in err, err
    assert (run_dir / "checkpoints" / "unreadable" / "ckpt-0000003.pt").read_bytes() == data
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-0000025.pt", "ckpt-0000030.pt"]


def test_export_refuses_an_existing_release_unless_forced(tmp_path, capsys):
    """Item 2: a release from another run is not replaced without --force (and the message says so)."""
    other = tmp_path / "release"
    assert run(capsys, ["export", TRAINED, "--out", other])[0] == 0
    (other / "config.json").write_text((other / "config.json").read_text().replace('"step": 20', '"step": 7'))
    before = snapshot(other)
    expect_error(
        capsys,
        ["export", TRAINED, "--out", other],
        "already holds a release",
        "pass --force to replace it",
        "choose another --out",
    )
    assert_unchanged(before)
    rc, out, _ = run(capsys, ["export", TRAINED, "--out", other, "--force"])
    assert rc == 0 and json.loads((other / "config.json").read_text())["step"] == 20


@pytest.mark.parametrize("mine", ["model.safetensors", "config.json"])
def test_export_does_not_replace_a_users_own_file(mine, tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / mine).write_bytes(b"my own weights" if mine.endswith("tensors") else b'{"mine": true}')
    before = snapshot(folder)
    expect_error(
        capsys,
        ["export", TRAINED, "--out", folder],
        "already holds" if mine.endswith("tensors") else "holds a training run",
        "choose another --out",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in folder.iterdir()) == [mine]


def test_export_with_an_empty_out_writes_nothing_into_the_current_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"my own weights")
    before = snapshot(tmp_path)
    expect_error(capsys, ["export", TRAINED, "--out", ""], "--out is empty: pass a path")
    expect_error(capsys, ["export", TRAINED, "--out", "  "], "--out is empty")
    assert_unchanged(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_export_onto_a_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    expect_error(capsys, ["export", TRAINED, "--out", path], "notes.txt is a file, not a directory")
    assert path.read_text() == "mine"


def _image_classes(root: Path, per_class: dict[str, int]) -> Path:
    for name, n in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("link", ["dog/up -> ..", "cat/up -> .. (the other order)", "dog/x.png -> ../cat/0.png"])
def test_prepare_refuses_an_image_reachable_under_two_classes(link, tmp_path, capsys, deadline):
    """Item 3: `ln -s .. dog/up` used to count the other classes' images again under dog's label."""
    from sddit.data.image_folder import scan_image_folder

    images = _image_classes(tmp_path / "images", {"cat": 3, "dog": 3})
    where, _, target = link.partition(" -> ")
    os.symlink(target.split(" ")[0], images / where)
    before = snapshot(images)
    line = expect_error(
        capsys,
        ["prepare", images, tmp_path / "out", "--vae", tmp_path / "no-vae", "--device", "cpu", "--no-progress"],
        "reached again (through a link)",
        "(class 'cat')",
        "(class 'dog')",
        "would count under both classes",
        "an image belongs to one class; remove the link",
    )
    assert str(images / where) in line or str(images / where.split("/")[0] / "up") in line, line
    assert_unchanged(before)
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="through a link"):
        scan_image_folder(images)


def test_prepare_counts_a_real_folder_once_within_its_class(tmp_path):
    from sddit.data.image_folder import scan_image_folder

    images = _image_classes(tmp_path / "images", {"cat": 2, "dog": 3})
    os.symlink(".", images / "dog" / "loop")
    os.symlink("0.png", images / "dog" / "again.png")  # the same image twice in its own class: once
    files, labels, classes = scan_image_folder(images)
    assert classes == ["cat", "dog"] and labels == [0, 0, 1, 1, 1]


OUTPUT_CASES = {
    # id: (argv given tmp_path, what the line must say)
    "sample --out an existing directory": (
        lambda t: ["sample", TRAINED, "--out", t],
        ["--out {t} is a directory", "pass a file path, e.g. {t}/result.png"],
    ),
    "sample --out without an image suffix": (
        lambda t: ["sample", TRAINED, "--out", t / "grid"],
        ["--out {t}/grid must end in .png or .jpg or .jpeg"],
    ),
    "sample --out ''": (lambda t: ["sample", TRAINED, "--out", ""], ["--out is empty: pass a path"]),
    "generate --out '' (wrote into the current directory)": (
        lambda t: ["generate", TRAINED, "--out", " ", "--num-samples", "2"],
        ["--out is empty: pass a path"],
    ),
    "eval --json ''": (lambda t: ["eval", TRAINED, "--json", ""], ["--json is empty: pass a path"]),
    "sample ''": (lambda t: ["sample", ""], ["CHECKPOINT is empty: pass a path"]),
    "prepare ROOT ''": (lambda t: ["prepare", t, ""], ["OUT is empty: pass a path"]),
    "eval --json a directory": (
        lambda t: ["eval", TRAINED, "--json", t],
        ["--json {t} is a directory", "pass a file path, e.g. {t}/result.json"],
    ),
    "train --run-dir of 300 characters": (
        lambda t: TRAIN + ["--run-dir", t / ("r" * 300)],
        [
            "cannot create the run directory",
            "(File name too long)",
            "too long for the file system: choose a shorter one",
            "another --run-dir",
        ],
    ),
}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_output_paths_that_cannot_be_written(case, tmp_path, capsys, monkeypatch):
    """Item 5: these used to end in a traceback after the work was done (or before it), or, empty,
    wrote into the current directory."""
    make, says = OUTPUT_CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    expect_error(capsys, make(tmp_path), *(s.format(t=tmp_path) for s in says))
    assert_unchanged(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)"
        ),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
)
def test_out_of_memory_is_one_line(error, tmp_path, capsys, monkeypatch):
    """Item 5: a model too large for the machine (hidden_size=8192 under ulimit -v 8G)."""

    def allocate(*a, **k):
        raise error

    monkeypatch.setattr("sddit.train.trainer.build_model", allocate)
    expect_error(
        capsys,
        TRAIN + ["--run-dir", tmp_path / "run", "--set", "model.hidden_size=8192"],
        "out of memory during `sddit train`",
        "lower train.batch_size",
        "or the model size",
        "a machine with more memory",
    )


def test_a_runtime_error_that_is_not_memory_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    """A fault of the code is not dressed up as the user's: it still raises."""

    def bug(*a, **k):
        raise RuntimeError("shape mismatch in a bug")

    monkeypatch.setattr("sddit.train.trainer.build_model", bug)
    with pytest.raises(RuntimeError, match="bug"):
        main([str(a) for a in TRAIN + ["--run-dir", tmp_path / "run"]])


# Sends this process SIGINT while `import torch` runs (the first seconds of every command).
CTRL_C_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal: a runner started with & ignores SIGINT

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_modules_import(tmp_path):
    """Item 5: Ctrl-C in the first seconds (torch importing) is one line and exit 130."""
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING, *TRAIN, "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    line = error_line(proc.stderr)
    assert line.startswith("error: interrupted during `sddit") and "run the same command again" in line
    assert not (tmp_path / "run").exists()


def test_importing_the_cli_does_not_import_torch():
    """What makes the case above hold: the entry point's module imports torch only inside main()."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, sddit.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.stdout.strip() == "False", proc.stderr


def _nan_ema(path: Path) -> Path:
    state = _ckpt_state(20)
    state["ema"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state["ema"].items()
    }
    torch.save(state, path)
    return path


NAN_CASES = {
    "sample a checkpoint whose EMA is NaN": lambda t: ["sample", _nan_ema(t / "ckpt-0000020.pt"), "--out", t / "g.png"],
    "eval it": lambda t: ["eval", _nan_ema(t / "ckpt-0000020.pt"), "--num-samples", "2", "--steps", "1"],
    "export it": lambda t: ["export", _nan_ema(t / "ckpt-0000020.pt"), "--out", t / "release"],
}


@pytest.mark.parametrize("case", NAN_CASES)
def test_non_finite_weights_are_refused(case, tmp_path, capsys):
    """Item 6: they used to sample an all-black grid with exit 0."""
    argv = NAN_CASES[case](tmp_path)
    before = snapshot(tmp_path)
    expect_error(
        capsys,
        argv,
        "ckpt-0000020.pt: the sampling EMA weights hold NaN or inf",
        "the run diverged",
        "use an earlier checkpoint",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000020.pt"]


@pytest.mark.parametrize(
    "argv,says",
    [
        (["sample", "{run}", "--cfg-scale", "nan", "--out", "{t}/g.png"], "--cfg-scale nan is not valid"),
        (["sample", "{run}", "--cfg-scale", "inf", "--out", "{t}/g.png"], "--cfg-scale inf is not valid"),
        (["eval", "{run}", "--cfg-scale", "nan"], "--cfg-scale nan is not valid"),
        (
            ["generate", "{run}", "--out", "{t}/gen", "--num-samples", "2", "--cfg-scale=-inf"],
            "--cfg-scale -inf is not valid",
        ),
        (["export", "{run}", "--out", "{t}/rel", "--scale-factor", "nan"], "--scale-factor nan is not valid"),
    ],
)
def test_non_finite_flags_are_refused(argv, says, tmp_path, capsys):
    expect_error(capsys, [a.format(run=TRAINED, t=tmp_path) for a in argv], says, "it must be a finite number")
    assert list(tmp_path.iterdir()) == []


def _two_class_latents(root: Path) -> Path:
    """A `sddit prepare` folder of random moments, labels 0 and 1."""
    from sddit.data.latent_format import FORMAT, FORMAT_VERSION, MANIFEST, shard_name

    root.mkdir(parents=True)
    moments = np.random.default_rng(0).standard_normal((16, 8, 4, 4)).astype(np.float16)
    np.savez(
        root / shard_name(0, 0),
        moments=moments,
        labels=np.arange(16) % 2,
        flips=np.zeros(16, bool),
        source=np.arange(16),
        meta=np.array("{}"),
    )
    (root / MANIFEST).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "latent_shape": [4, 4, 4],
                "resolution": 32,
                "class_names": ["a", "b"],
                "scale_factor": 0.18215,
                "vae": "unused",
                "counts": {"entries": 16},
                "shards": [{"file": shard_name(0, 0), "entries": 16, "rank": 0}],
            }
        )
    )
    return root


@pytest.mark.parametrize(
    "data,k,says",
    [
        ("digits", 5, "the data has labels 0..9 but model.num_classes=5"),
        ("latents", 1, "the data has labels 0..1 but model.num_classes=1"),
    ],
)
def test_labels_outside_num_classes_stop_before_training(data, k, says, tmp_path, capsys):
    """Item 7: num_classes=5 on 10 labels was an IndexError deep in the embedding; num_classes=1 on two
    classes silently trained class 1 as the CFG null class."""
    argv = TRAIN + ["--run-dir", tmp_path / "run", "--set", f"model.num_classes={k}"]
    if data == "latents":
        argv += [
            "--set",
            "data.dataset=latents",
            "--set",
            f"data.root={_two_class_latents(tmp_path / 'lat')}",
            "--set",
            "model.in_channels=4",
            "--set",
            "model.input_size=4",
            "--set",
            "data.hflip=false",
        ]
    expect_error(
        capsys,
        argv,
        says,
        f"labels must lie in [0, {k})",
        "null class",
        f"set model.num_classes={10 if data == 'digits' else 2}",
    )
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_reference_statistics_that_are_not_a_covariance(tmp_path, capsys):
    """Item 8: a non-positive-semidefinite sigma printed `FID = -1659`."""
    sigma = np.eye(2048)
    sigma[0, 0] = -5000.0
    np.savez(tmp_path / "r.npz", mu=np.zeros(2048), sigma=sigma)
    _pngs(tmp_path / "s", 4)
    before = snapshot(tmp_path)
    expect_error(
        capsys,
        ["eval", "--samples", tmp_path / "s", "--ref", tmp_path / "r.npz", "--batch-size", "4"],
        "r.npz: sigma is not a covariance matrix",
        "not positive semi-definite",
        "smallest eigenvalue is -5e+03",
        "recompute the reference statistics",
    )
    assert_unchanged(before)


def test_covariance_check_accepts_real_statistics_and_rounding():
    from sddit.eval.files import _not_a_covariance

    feats = np.random.default_rng(0).standard_normal((50, 64))
    cov = np.cov(feats, rowvar=False)  # rank 49 < 64: singular, PSD up to rounding
    assert _not_a_covariance(cov) is None
    assert _not_a_covariance(cov.astype(np.float16).astype(np.float64)) is None  # stored in half precision
    skew = cov.copy()
    skew[0, 1] += 1.0
    assert "not symmetric" in _not_a_covariance(skew)


@pytest.mark.parametrize(
    "text,says",
    [
        ("train:\n  lr: 1.0e-3\n  batch_size: 8\n  lr: 5.0e-3\n", "duplicate key 'lr' (first at line 2) at line 4"),
        (
            "objective: dit\ntrain:\n  lr: 1.0e-3\nobjective: sddit\n",
            "duplicate key 'objective' (first at line 1) at line 4",
        ),
        ("train: {lr: 1.0e-3, lr: 2.0e-3}\n", "duplicate key 'lr' (first at line 1)"),
    ],
)
def test_duplicate_keys_in_a_yaml_config(text, says, tmp_path, capsys):
    """Item 8: the last one used to win silently."""
    config = _yaml(tmp_path, "mine", text)
    before = snapshot(tmp_path)
    expect_error(
        capsys,
        ["train", "--config", config, "--run-dir", tmp_path / "run", "--device", "cpu"],
        "mine.yaml is not valid YAML",
        says,
        "fix the file",
    )
    assert_unchanged(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]
