"""Exact resume after SIGKILL, fallback from a truncated checkpoint, non-finite losses, and
2-process torchrun == 1 process with the same global batch (CPU, gloo)."""

import json
import re
import shutil
from pathlib import Path
import os
import random
import signal
import socket
import subprocess
import sys

import pytest
import torch

from sddit.checkpoint import CHECKPOINT_VERSION, list_checkpoints, load_checkpoint
from sddit.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


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
        "objective=sddit",
        "--set",
        "train.num_threads=1",
        *extra,
    ]


def final_state(run):
    # weights_only without an allow-list: new checkpoints hold tensors and plain values only
    return torch.load(list_checkpoints(run)[-1], weights_only=True)


def assert_states_equal(a, b, exact=True, atol=0.0):
    for part in ("model", "ema"):
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            if exact:
                assert torch.equal(x, y), (part, k)
                continue
            if k.endswith("attn.qkv.bias"):
                # The key bias has an exactly zero gradient (softmax ignores a per-query constant), so
                # its "gradient" is round-off that Adam scales up to ~lr-sized steps: only bound it by
                # lr x steps (1e-3 x 12); q and v biases are compared like every other weight.
                q, kk, v = x.chunk(3)
                q2, kk2, v2 = y.chunk(3)
                assert (kk - kk2).abs().max() <= 1.2e-2
                x, y = torch.cat([q, v]), torch.cat([q2, v2])
            torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=f"{part}.{k}")
    ta = {k: v for k, v in a["objective"].items() if k.startswith("teacher.")}
    tb = {k: v for k, v in b["objective"].items() if k.startswith("teacher.")}
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        if exact:
            assert torch.equal(ta[k], tb[k]), ("teacher", k)
        else:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=atol)


# Runs `sddit train` and SIGKILLs the process right after it wrote the checkpoint of step KILL_AT: a
# real kill -9 mid-run, at a step the test chooses (polling the folder from outside raced the run).
KILL_AFTER_CHECKPOINT = """
import os, signal, sys
import sddit.train.trainer as trainer
real = trainer.save_checkpoint
def save_then_die(state, run_dir, step, keep_last=2, **kw):
    path = real(state, run_dir, step, keep_last, **kw)
    if step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return path
trainer.save_checkpoint = save_then_die
from sddit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    steps = ["--max-steps", "40", "--set", "train.ckpt_every=4", "--set", "train.keep_last=3"]
    subprocess.run(train_cmd(tmp_path / "full", *steps), check=True, env=ENV, capture_output=True)

    run = tmp_path / "killed"
    kill_after = random.Random(20261128).choice(range(8, 37, 4))  # a checkpointed step, the same every run
    print(f"killing the run with SIGKILL right after its step-{kill_after} checkpoint")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKPOINT, *train_cmd(run, *steps)[3:]],
        env={**ENV, "KILL_AT": str(kill_after)},
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_at = max(int(p.stem.split("-")[1]) for p in list_checkpoints(run))
    assert killed_at == kill_after
    out = subprocess.run(train_cmd(run, *steps), check=True, env=ENV, capture_output=True, text=True)
    assert "resumed from" in out.stdout
    a, b = final_state(tmp_path / "full"), final_state(run)
    assert a["step"] == b["step"] == 40
    assert_states_equal(a, b, exact=True)
    for ga, gb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ga["exp_avg"], gb["exp_avg"]) and torch.equal(ga["exp_avg_sq"], gb["exp_avg_sq"])
    torch.testing.assert_close(a["objective"]["center_patch"], b["objective"]["center_patch"], rtol=0, atol=0)
    # steps between the checkpoint and the kill are trained again but logged once, with the same losses
    # (except a line whose 5-step averaging window straddles the resumed step: it averages fewer steps)
    full, resumed = (
        [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (tmp_path / "full", run)
    )
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    whole = [i for i, r in enumerate(full) if r["step"] <= kill_after or r["step"] - 5 >= kill_after]
    assert len(whole) >= len(full) - 1
    assert [resumed[i]["loss"] for i in whole] == [full[i]["loss"] for i in whole]


def test_truncated_newest_checkpoint_falls_back(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["train", "--config", "digits_tiny", "--run-dir", str(run), "--device", "cpu", "--no-eval"]
    assert main(args + ["--max-steps", "20"]) == 0  # checkpoints at 10 and 20
    newest = list_checkpoints(run)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-copy, a bad disk, ...
    capsys.readouterr()
    assert main(args + ["--max-steps", "25"]) == 0
    out, err = capsys.readouterr()
    assert "ckpt-0000020.pt is unreadable" in err and "falling back" in err and "at step 10" in out  # warnings: stderr
    assert final_state(run)["step"] == 25


def test_nonfinite_loss_skips_steps_then_stops(tmp_path, monkeypatch, capsys):
    from sddit import objectives

    real = objectives.DiTObjective.forward

    def flaky(self, net, x0, y, step):
        loss, terms = real(self, net, x0, y, step)
        return (loss * float("nan"), terms) if step in (3, 4) or step >= 12 else (loss, terms)

    monkeypatch.setattr(objectives.DiTObjective, "forward", flaky)
    run = tmp_path / "nan"
    assert (
        main(
            [
                "train",
                "--config",
                "digits_tiny",
                "--run-dir",
                str(run),
                "--device",
                "cpu",
                "--no-eval",
                "--max-steps",
                "30",
            ]
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert re.search("non-finite for 5 steps in a row.*last good checkpoint is .*ckpt-0000010.pt", err), err
    assert "non-finite loss at step 3; step skipped (1 in a row)" in err
    state = final_state(run)
    assert state["step"] == 10 and all(torch.isfinite(v).all() for v in state["model"].values())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_matches_one_process(tmp_path):
    steps = ["--max-steps", "12", "--set", "train.ckpt_every=0", "--set", "train.log_every=4"]
    subprocess.run(train_cmd(tmp_path / "one", *steps), check=True, env=ENV, capture_output=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "sddit.cli",
        *train_cmd(tmp_path / "two", *steps)[3:],
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [4, 8, 12]  # rank 0 alone writes
    for a, b in zip(one, two):
        for k in ("loss", "loss_gen", "loss_disc"):
            assert b[k] == pytest.approx(a[k], rel=1e-4), (a["step"], k)
    # Gradients are averaged in another order over 2 ranks: weights agree to float32 round-off.
    assert_states_equal(final_state(tmp_path / "one"), final_state(tmp_path / "two"), exact=False, atol=1e-5)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    import errno

    from sddit import checkpoint  # noqa: F401  (its torch.save is what a full disk breaks)

    run = tmp_path / "disk"
    args = ["train", "--config", "digits_tiny", "--run-dir", str(run), "--device", "cpu", "--no-eval"]
    assert main(args + ["--max-steps", "10"]) == 0
    good = list_checkpoints(run)[-1].read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    capsys.readouterr()
    assert main(args + ["--max-steps", "20"]) == 2
    assert re.search("No space left on device.*ckpt-0000010.pt, is intact.*re-run", capsys.readouterr().err)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0000010.pt"]
    assert list_checkpoints(run)[-1].read_bytes() == good
    assert not list((run / "checkpoints").glob(".ckpt-*"))  # no temp file left behind


def test_checkpoint_from_another_config_is_refused(tmp_path, capsys):
    run = tmp_path / "mix"
    args = [
        "train",
        "--config",
        "digits_tiny",
        "--run-dir",
        str(run),
        "--device",
        "cpu",
        "--no-eval",
        "--max-steps",
        "10",
    ]
    assert main(args) == 0
    capsys.readouterr()
    # even with --allow-config-change: other weight shapes cannot be resumed
    assert main(args[:-2] + ["--max-steps", "12", "--set", "model.hidden_size=64", "--allow-config-change"]) == 2
    assert re.search("does not match this model config.*use another --run-dir", capsys.readouterr().err)
    assert main(args[:-2] + ["--max-steps", "12", "--set", "objective=sddit", "--allow-config-change"]) == 2
    assert "objective=dit, not sddit" in capsys.readouterr().err


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_v1_checkpoint_loads_and_resumes(tmp_path):
    """A checkpoint written before the package layout changed (format 1) still loads, samples and
    resumes, and the resumed run ends where the original run ended."""
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "v1-sddit-digits-step10.pt", run / "checkpoints" / "ckpt-0000010.pt")
    from sddit.pretrained import load_sampling_net

    cfg, net = load_sampling_net(run)
    assert cfg.objective == "sddit" and net(torch.zeros(2, 1, 8, 8), 1.0, torch.tensor([0, 1])).shape == (2, 1, 8, 8)
    assert (
        main(
            [
                "train",
                "--config",
                "digits_tiny",
                "--set",
                "objective=sddit",
                "--run-dir",
                str(run),
                "--device",
                "cpu",
                "--no-eval",
                "--set",
                "train.keep_last=0",
            ]
        )
        == 0
    )
    resumed = final_state(run)
    assert resumed["step"] == 20 and resumed["version"] == CHECKPOINT_VERSION
    assert any(k.startswith("teacher.") for k in resumed["objective"])
    expected = torch.load(FIXTURES / "v1-sddit-digits-step20-weights.pt", weights_only=True)
    start = load_checkpoint(FIXTURES / "v1-sddit-digits-step10.pt")  # weights-only + the numpy allow-list
    for part in ("model", "ema"):
        moved = 0
        for k, v in expected[part].items():
            # same code path, but possibly another thread count than the one that wrote the fixture
            torch.testing.assert_close(resumed[part][k], v, rtol=1e-4, atol=1e-5, msg=f"{part}.{k}")
            moved += not torch.equal(start[part][k], v)
        assert moved > 0  # ten steps of training happened in between


def test_sampling_checkpoint_loads_the_ema_or_the_raw_weights():
    """FID uses the EMA; `weights="raw"` loads the trained weights instead (guidance.py's `raw:` setting)."""
    from sddit.pretrained import load_sampling_checkpoint
    from sddit.sampling.sources import load_source

    path = FIXTURES / "v1-sddit-digits-step10.pt"
    state = load_checkpoint(path)
    for weights, key in (("ema", "ema"), ("raw", "model")):
        _, _, net = load_sampling_checkpoint(path, weights=weights)
        loaded = net.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state[key].items())
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["ema"])  # the check can fail
    with pytest.raises(ValueError, match="'ema' or 'raw'"):
        load_sampling_checkpoint(path, weights="last")
    assert load_source(path, weights="raw").net.model.state_dict().keys() == state["model"].keys()
