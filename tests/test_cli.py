"""End-to-end runs of the `sddit` command on the tiny digits config."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from sddit.cli import main
from sddit.checkpoint import list_checkpoints


@pytest.mark.parametrize("objective", ["dit", "maskdit", "sddit"])
def test_train_sample_eval(tmp_path, objective, capsys):
    run = tmp_path / objective
    rc = main(
        [
            "train",
            "--config",
            "digits_tiny",
            "--run-dir",
            str(run),
            "--max-steps",
            "20",
            "--device",
            "cpu",
            "--set",
            f"objective={objective}",
            "--set",
            "eval.num_samples=20",
            "--set",
            "eval.steps=4",
        ]
    )
    assert rc == 0
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["ckpt-0000010.pt", "ckpt-0000020.pt"]
    state = torch.load(ckpts[-1], weights_only=True)
    assert state["step"] == 20 and state["config"]["objective"] == objective
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    expected = {"step", "loss", "lr", "img_per_s", "loss_gen"}
    expected |= {
        "dit": set(),
        "maskdit": {"loss_mae"},
        "sddit": {
            "loss_disc",
            "loss_image",
            "loss_patch",
            "teacher_entropy_image",
            "teacher_entropy_patch",
            "prototypes_used_image",
            "teacher_logit_std_patch",
            "kl_teacher_student_patch",
        },
    }[objective]
    assert expected <= set(records[-1]), set(records[-1])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    grid = Image.open(run / "samples.png")
    assert grid.size[0] > 8 * 10 and grid.size[1] > 8 * 10  # 10 classes x 10 samples, upscaled
    fid = json.loads((run / "fid.json").read_text())
    assert fid["num_samples"] == 20 and fid["fid"] > 0
    out = capsys.readouterr().out
    assert "FID-20 = " in out and "20 samples" in out

    # sample and eval from the run directory
    png = tmp_path / "grid.png"
    assert main(["sample", str(run), "--out", str(png), "--steps", "3", "--seed", "1", "--per-class", "2"]) == 0
    assert Image.open(png).size[1] > Image.open(png).size[0] // 2  # 10 rows, 2 columns
    assert main(["eval", str(run), "--num-samples", "20", "--steps", "3", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["num_samples"] == 20
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(run),
                "--num-samples",
                "20",
                "--steps",
                "3",
                "--cfg-scale",
                "2",
                "--cfg-interval",
                "0.3,5",
                "--json",
                str(tmp_path / "e2.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e2.json").read_text())["cfg_interval"] == [0.3, 5.0]
    assert "cfg 2.0 at sigma in (0.3, 5]" in capsys.readouterr().out
    # EDM's stochastic sampler: recorded, printed, and not the ODE's samples
    churn_args = ["eval", str(run), "--num-samples", "20", "--steps", "3", "--churn", "10"]
    assert main([*churn_args, "--json", str(tmp_path / "e3.json")]) == 0
    e, e3 = (json.loads((tmp_path / f).read_text()) for f in ("e.json", "e3.json"))
    assert (e["sampler"], e["churn"], e3["sampler"], e3["churn"]) == ("edm_heun", 0.0, "edm_stochastic", 10.0)
    assert e3["fid"] != e["fid"]
    assert "3 Heun steps with S_churn 10," in capsys.readouterr().out


def test_rerun_resumes_instead_of_restarting(tmp_path):
    run = tmp_path / "r"
    args = ["train", "--config", "digits_tiny", "--run-dir", str(run), "--device", "cpu", "--no-eval"]
    assert main(args + ["--max-steps", "10"]) == 0
    assert main(args + ["--max-steps", "15"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15]


def test_unknown_key_from_the_command_line_exits_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "sddit.cli", "train", "--set", "train.lrr=1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'train.lrr'" in proc.stderr and "train.lr" in proc.stderr


def test_fid_during_training_is_logged_and_drawn(tmp_path):
    run = tmp_path / "fidrun"
    assert (
        main(
            [
                "train",
                "--config",
                "digits_tiny",
                "--run-dir",
                str(run),
                "--max-steps",
                "10",
                "--no-eval",
                "--set",
                "train.fid_every=5",
                "--set",
                "train.fid_samples=10",
                "--set",
                "eval.steps=3",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in records if "fid" in r]
    assert [r["step"] for r in fids] == [5, 10] and all(r["fid_samples"] == 10 and r["fid"] > 0 for r in fids)
    for name in ("loss_curve.png", "fid_curve.png"):
        assert Image.open(run / name).size[0] > 100
