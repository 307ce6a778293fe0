"""`sddit generate` (1 vs 2 processes, ADM .npz layout, VAE decoding) and `sddit eval --samples --ref`."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sddit.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
GEN = ["--num-samples", "10", "--steps", "3", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture
def one_thread():
    """Same thread count as the OMP_NUM_THREADS=1 subprocesses, so matmuls round identically."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("gen") / "run"
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
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def generated(run_dir, tmp_path_factory):
    """The same 10 samples from 1 process (in-process) and from 2 processes (torchrun)."""
    root = tmp_path_factory.mktemp("samples")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["generate", str(run_dir), "--out", str(root / "one"), *GEN]) == 0
    finally:
        torch.set_num_threads(previous)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "sddit.cli",
        "generate",
        str(run_dir),
        "--out",
        str(root / "two"),
        *GEN,
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_one_and_two_processes_write_identical_samples(generated):
    one, two = np.load(generated / "one" / "samples.npz"), np.load(generated / "two" / "samples.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"])  # bit for bit
    assert np.array_equal(one["arr_1"], two["arr_1"])
    pngs = sorted(p.name for p in (generated / "two" / "images").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(10)]
    meta = json.loads((generated / "two" / "samples.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "done" and meta["num_samples"] == 10
    assert meta["steps"] == 3 and meta["cfg_scale"] == 1.5 and meta["seed"] == 0 and meta["precision"] == "fp32"
    assert meta["checkpoint"].endswith("ckpt-0000004.pt") and "date" in meta and "git" in meta


def test_npz_has_the_adm_layout(generated):
    data = np.load(generated / "one" / "samples.npz")
    x = data["arr_0"]
    assert x.dtype == np.uint8 and x.shape == (10, 8, 8, 3)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])  # grey repeated
    png = np.asarray(Image.open(generated / "one" / "images" / "000003.png"))
    assert png.shape == (8, 8) and np.array_equal(png, x[3, ..., 0])
    labels = data["arr_1"]
    assert labels.dtype == np.int64 and labels.shape == (10,) and ((0 <= labels) & (labels < 10)).all()


def test_labels_and_noise_follow_the_seed_alone(run_dir, generated, tmp_path, one_thread):
    # --seed 3: sample i uses seed 3 + i, so it is sample i + 3 of the seed-0 run (other batches).
    assert (
        main(
            [
                "generate",
                str(run_dir),
                "--out",
                str(tmp_path / "s3"),
                "--seed",
                "3",
                "--num-samples",
                "4",
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ref = np.load(generated / "one" / "samples.npz")
    new = np.load(tmp_path / "s3" / "samples.npz")
    assert np.array_equal(new["arr_1"], ref["arr_1"][3:7])
    # pixel values may move by one level: the samples now share a batch with other samples
    assert np.abs(new["arr_0"].astype(int) - ref["arr_0"][3:7].astype(int)).max() <= 1
    assert (
        main(
            [
                "generate",
                str(run_dir),
                "--out",
                str(tmp_path / "bal"),
                "--balanced",
                "--num-samples",
                "12",
                "--steps",
                "1",
                "--batch-size",
                "12",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "bal" / "samples.npz")["arr_1"].tolist() == [i % 10 for i in range(12)]


def test_generate_refuses_a_used_folder_and_resumes_with_same_settings(run_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "g"
    args = [
        "generate",
        str(run_dir),
        "--out",
        str(out),
        "--num-samples",
        "6",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    first = np.load(out / "samples.npz")["arr_0"]
    (out / "images" / "000003.png").unlink()  # an interrupted run
    (out / "samples.npz").unlink()
    capsys.readouterr()
    assert main(args) == 2
    _one_line_error(capsys, "--resume")
    assert main(args + ["--resume", "--steps", "3"]) == 2
    _one_line_error(capsys, "other settings", "steps 2 -> 3")
    assert main(args + ["--resume"]) == 0
    assert np.array_equal(np.load(out / "samples.npz")["arr_0"], first)
    assert json.loads((out / "samples.json").read_text())["skipped_existing"] == 4


def test_eval_samples_against_reference_folder_and_stats(generated, tmp_path, capsys):
    # 10 samples (npz) vs 10 reference images (PNG folder): every metric but IS, and a stats cache.
    out = tmp_path / "e.json"
    cache = tmp_path / "ref.stats.npz"
    ref_dir = generated / "two" / "images"
    assert (
        main(
            [
                "eval",
                "--samples",
                str(generated / "one" / "samples.npz"),
                "--ref",
                str(ref_dir),
                "--json",
                str(out),
                "--cache-ref",
                str(cache),
                "--device",
                "cpu",
                "--batch-size",
                "10",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["num_samples"] == 10 and r["num_reference_images"] == 10
    for key in ("fid", "sfid", "precision", "recall"):
        assert isinstance(r[key], float), key
    # the same images on both sides: FID/sFID ~0 (rank-10 covariances; see test_evaluation's bound)
    assert abs(r["fid"]) < 1e-2 and abs(r["sfid"]) < 1e-2
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["inception_score"] is None
    assert "IS: n/a (the Inception file has no logits)" in printed
    assert "FID-10 = " in printed and "sFID-10 = " in printed and "10 samples vs 10 reference images" in printed
    with np.load(cache) as c:
        assert {"mu", "sigma", "mu_s", "sigma_s", "pool_features"} <= set(c.files)
        mu, sigma = c["mu"], c["sigma"]

    # a stats-only reference (mu/sigma, as pytorch-fid writes them): FID; no sFID, no precision/recall
    stats = tmp_path / "mu_sigma.npz"
    np.savez(stats, mu=mu, sigma=sigma)
    out2 = tmp_path / "e2.json"
    assert (
        main(
            [
                "eval",
                "--samples",
                str(ref_dir),
                "--ref",
                str(stats),
                "--json",
                str(out2),
                "--device",
                "cpu",
                "--batch-size",
                "10",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    r2 = json.loads(out2.read_text())
    assert r2["num_samples"] == 10 and abs(r2["fid"]) < 1e-2
    assert r2["sfid"] is None and r2["precision"] is None and r2["recall"] is None
    assert "sFID: n/a (the reference statistics have no mu_s/sigma_s)" in printed
    assert "precision/recall: n/a (they need reference images, not only statistics) (10 samples)" in printed


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--samples", str(tmp_path / "missing.npz"), "--ref", str(tmp_path)]) == 2
    _one_line_error(capsys, "missing.npz does not exist")
    assert main(["eval", "--samples", str(tmp_path / "x.npz")]) == 2
    _one_line_error(capsys, "--samples PATH and --ref PATH")
    assert main(["eval"]) == 2
    _one_line_error(capsys, "checkpoint")
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    (tmp_path / "imgs").mkdir()
    assert main(["eval", "--samples", str(tmp_path / "imgs"), "--ref", str(tmp_path / "bad.npz")]) == 2
    _one_line_error(capsys, "no PNG/JPEG images")
    assert (
        main(
            [
                "generate",
                "--official-dit",
                str(tmp_path / "DiT-XL-2-256x256.pt"),
                "--out",
                str(tmp_path / "o"),
                "--num-samples",
                "2",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "does not exist")


def test_inception_logit_weight_hook():
    from sddit.eval.inception import inception_logit_weight

    class WithHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output = torch.nn.Linear(2048, 1008, bias=False)

    assert inception_logit_weight(WithHead()).shape == (1008, 2048)
    assert inception_logit_weight(torch.nn.Linear(3, 3)) is None


def test_latent_model_is_decoded_with_the_manifest_vae(tiny_vae, tmp_path, capsys, one_thread):
    from sddit.config import config_to_dict, load_config
    from sddit.data.latent_format import FORMAT, MANIFEST
    from sddit.models import build_model

    latents = tmp_path / "latents"
    latents.mkdir()
    manifest = {
        "format": FORMAT,
        "latent_shape": [4, 4, 4],
        "class_names": [str(i) for i in range(10)],
        "scale_factor": 0.18215,
        "shards": [],
        "counts": {"entries": 0},
        "resolution": 32,
        "vae": str(tiny_vae),
    }
    (latents / MANIFEST).write_text(json.dumps(manifest))
    cfg = load_config(
        "digits_tiny", ["model.in_channels=4", "model.input_size=4", "data.dataset=latents", f"data.root={latents}"]
    )
    torch.manual_seed(0)
    sd = build_model(cfg).state_dict()
    ckpt = tmp_path / "latent.pt"
    torch.save({"model": sd, "ema": sd, "config": config_to_dict(cfg), "step": 0}, ckpt)

    args = ["generate", str(ckpt), "--num-samples", "3", "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    x = np.load(tmp_path / "a" / "samples.npz")["arr_0"]
    assert x.dtype == np.uint8 and x.shape == (3, 8 * 4, 8 * 4, 3)
    meta = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert meta["vae"] == str(tiny_vae) and meta["scale_factor"] == 0.18215 and "manifest" in meta["vae_from"]

    (latents / MANIFEST).unlink()  # the latent folder is not reachable here: --vae is required
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "--vae")
    assert main(args + ["--out", str(tmp_path / "c"), "--vae", str(tiny_vae)]) == 0
    assert np.array_equal(np.load(tmp_path / "c" / "samples.npz")["arr_0"], x)


def test_official_dit_checkpoint_generates_decoded_images(tiny_vae, tmp_path, one_thread):
    from sddit.sampling.sources import load_official_source
    from sddit.sampling.to_files import generate_samples
    from sddit.models import DiT

    tiny = dict(patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4)
    torch.manual_seed(0)
    path = tmp_path / "DiT-tiny.pt"
    torch.save(DiT(input_size=4, num_classes=10, learn_sigma=True, **tiny).state_dict(), path)
    source = load_official_source(path, None, image_size=32, num_classes=10, model_kwargs=tiny)
    meta = generate_samples(
        source, tmp_path / "o", 2, steps=2, batch_size=2, vae=str(tiny_vae), progress=False, log=lambda *a: None
    )
    assert meta["official_dit"] == str(path.resolve()) and meta["sampler_kwargs"]["sigma_max"] > 100
    assert np.load(tmp_path / "o" / "samples.npz")["arr_0"].shape == (2, 32, 32, 3)
