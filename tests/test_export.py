"""`sddit export` (the sampling EMA as model.safetensors + config.json), the commands that accept a
release, and the notebook API (`sddit.load_pretrained`, `sddit.sample`), on the tiny digits config."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import sddit
from sddit.checkpoint import list_checkpoints
from sddit.cli import main
from sddit.errors import CheckpointError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("exp") / "run"
    assert (
        main(
            [
                "train",
                "--config",
                "digits_tiny",
                "--run-dir",
                str(run),
                "--max-steps",
                "4",
                "--no-eval",
                "--device",
                "cpu",
                "--set",
                "objective=sddit",
                "--set",
                "train.num_threads=1",
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def release(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "release"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def test_release_holds_the_sampling_ema_only(run_dir, release):
    from safetensors import safe_open

    ckpt = list_checkpoints(run_dir)[-1]
    state = torch.load(ckpt, weights_only=False)
    with safe_open(str(release / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert keys == set(state["ema"])  # the DiT / SplitDiT state-dict names
        for k in keys:
            assert torch.equal(f.get_tensor(k), state["ema"][k]), k
    assert not any(k.startswith("teacher.") for k in keys)
    meta = json.loads((release / "config.json").read_text())
    assert meta["format"] == "sddit-pretrained" and meta["version"] == 1 and meta["step"] == 4
    assert meta["latent"] is False and meta["vae"] is None and meta["config"]["objective"] == "sddit"
    assert meta["sample_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    # the optimiser moments, the student and the teacher stay behind
    assert (release / "model.safetensors").stat().st_size < ckpt.stat().st_size / 3


def test_commands_accept_a_release(run_dir, release, tmp_path, capsys):
    gen = ["--num-samples", "6", "--steps", "2", "--batch-size", "3", "--device", "cpu"]
    assert main(["generate", str(run_dir), "--out", str(tmp_path / "a"), *gen]) == 0
    assert main(["generate", str(release), "--out", str(tmp_path / "b"), *gen]) == 0
    assert np.array_equal(
        np.load(tmp_path / "a" / "samples.npz")["arr_0"], np.load(tmp_path / "b" / "samples.npz")["arr_0"]
    )
    assert main(["sample", str(release), "--steps", "2", "--per-class", "1"]) == 0
    assert Image.open(release / "samples_seed0.png").size[1] > 8 * 10
    out = tmp_path / "e.json"
    assert main(["eval", str(release), "--num-samples", "10", "--steps", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_samples"] == 10 and "vs 10 digits test images" in capsys.readouterr().out


def test_load_pretrained_samples_like_generate_and_unpickles_nothing(run_dir, release, tmp_path, monkeypatch):
    assert (
        main(
            [
                "generate",
                str(run_dir),
                "--out",
                str(tmp_path / "g"),
                "--num-samples",
                "5",
                "--steps",
                "2",
                "--batch-size",
                "5",
                "--balanced",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    expected = np.load(tmp_path / "g" / "samples.npz")["arr_0"][..., :1]  # grey, repeated to RGB in the npz

    def refuse(*a, **k):
        raise AssertionError("a release was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = sddit.load_pretrained(release, device="cpu")
    assert not model.latent and model.num_classes == 10 and model.config.objective == "sddit"
    images = model.sample([0, 1, 2, 3, 4], seed=0, steps=2, batch_size=5, output="uint8")
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), expected)
    floats = sddit.sample(model, [0, 1, 2, 3, 4], steps=2, batch_size=5)
    assert floats.dtype == torch.float32 and floats.min() >= -1 and floats.max() <= 1
    from sddit.sampling import quantize

    assert torch.equal(quantize(floats), images)
    monkeypatch.undo()
    from_run = sddit.sample(run_dir, [0, 1, 2, 3, 4], steps=2, batch_size=5, output="uint8")  # a run dir works too
    assert torch.equal(from_run, images)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        model.sample([10])


def test_bad_releases_are_one_line_errors(release, run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((release / "model.safetensors").read_bytes()[:100])
    (bad / "config.json").write_text((release / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors is unreadable") as e:
        sddit.load_pretrained(bad, device="cpu")
    assert "\n" not in str(e.value)
    (bad / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert main(["sample", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not an sddit release" in err and "\n" not in err
    assert main(["export", str(run_dir), "--out", str(run_dir)]) == 2  # never over a training run
    assert "holds a training run" in capsys.readouterr().err


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    from sddit.errors import ConfigError
    from sddit.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="MPS is not available"):
        resolve_device("mps")
