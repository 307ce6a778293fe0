"""Latent runs as a researcher lives them, end to end on a tiny random VAE (tests/conftest.py): grids
decoded through the VAE during and after training, FID against an image-folder reference, loggers,
`sddit sample` / `eval` / `generate` on latent checkpoints and on a release (`sddit export`), and
`sddit.load_pretrained`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sddit.cli import main
from sddit.data.latent_format import FORMAT, FORMAT_VERSION, MANIFEST, shard_name

PIXELS = 32  # the tiny VAE decodes 4x4 latents to 32x32 images


def grid_size(cols, rows):
    """(width, height) of a save_grid PNG of 32x32 tiles: 2-px padding, then upscaled x2 (64 // 32)."""
    return 2 * (cols * (PIXELS + 2) + 2), 2 * (rows * (PIXELS + 2) + 2)


def write_latent_folder(root, vae, entries=64, classes=10, seed=0):
    """A `sddit prepare` folder (format 1) with random moments whose manifest names `vae`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    shards = []
    for k, n in enumerate((40, entries - 40)):
        moments = rng.standard_normal((n, 8, 4, 4)).astype(np.float16)
        moments[:, 4:] = -2.0  # logvar
        np.savez(
            root / shard_name(0, k),
            moments=moments,
            labels=rng.integers(0, classes, n),
            flips=np.zeros(n, bool),
            source=np.arange(n),
            meta=np.array("{}"),
        )
        shards.append({"file": shard_name(0, k), "entries": n, "rank": 0})
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "latent_shape": [4, 4, 4],
        "resolution": PIXELS,
        "class_names": [str(i) for i in range(classes)],
        "scale_factor": 0.18215,
        "vae": str(vae),
        "shards": shards,
        "counts": {"entries": entries},
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def latents(tiny_vae, tmp_path_factory):
    return write_latent_folder(tmp_path_factory.mktemp("lat") / "latents", tiny_vae)


@pytest.fixture(scope="module")
def ref_folder(tmp_path_factory):
    """12 real images (random 32x32 RGB PNGs) as the FID reference."""
    root = tmp_path_factory.mktemp("ref") / "images"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (PIXELS, PIXELS, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def latent_args(latents, *extra):
    return [
        "--config",
        "digits_tiny",
        "--device",
        "cpu",
        "--set",
        "data.dataset=latents",
        "--set",
        f"data.root={latents}",
        "--set",
        "model.in_channels=4",
        "--set",
        "model.input_size=4",
        "--set",
        "eval.grid_steps=2",
        "--set",
        "eval.steps=2",
        "--set",
        "train.num_threads=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def latent_run(latents, ref_folder, tmp_path_factory):
    """4 steps of DiT on latents with a grid every 2 steps, FID-10 at step 4 against the image folder,
    tensorboard, and the post-training grid + FID-10."""
    run = tmp_path_factory.mktemp("runs") / "latent"
    rc = main(
        [
            "train",
            *latent_args(latents),
            "--run-dir",
            str(run),
            "--max-steps",
            "4",
            "--set",
            "train.sample_every=2",
            "--set",
            "train.sample_classes=3",
            "--set",
            "train.sample_per_class=2",
            "--set",
            "train.fid_every=4",
            "--set",
            "train.fid_samples=10",
            "--set",
            f"train.fid_ref={ref_folder}",
            "--set",
            "train.log_every=2",
            "--set",
            "train.loggers=[jsonl,tensorboard]",
            "--set",
            "eval.num_samples=10",
        ]
    )
    assert rc == 0
    return run


def test_training_on_latents_writes_decoded_grids_and_an_fid_curve(latent_run, tiny_vae):
    run = latent_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    grids = [r for r in records if "samples" in r]
    assert [(r["step"], r["samples"]) for r in grids] == [
        (2, "samples/step-0000002.png"),
        (4, "samples/step-0000004.png"),
    ]
    fids = [r for r in records if "fid" in r]
    assert [r["step"] for r in fids] == [4] and fids[0]["fid_samples"] == 10 and fids[0]["fid"] > 0
    for name in ("samples/step-0000002.png", "samples/step-0000004.png"):
        img = Image.open(run / name)
        # 3 classes x 2 samples of decoded 32x32 RGB images (upscaled x2), not 4x4 latents
        assert img.mode == "RGB" and img.size == grid_size(2, 3), img.size
    final = Image.open(run / "samples.png")
    assert final.mode == "RGB" and final.size == grid_size(10, 3)
    fid = json.loads((run / "fid.json").read_text())
    assert fid["num_samples"] == 10 and fid["num_reference"] == 12 and fid["fid"] > 0
    assert Image.open(run / "fid_curve.png").size[0] > 100
    # the grids are what the VAE decodes: the first tile equals the tiny VAE's decoding of that sample
    from sddit.pretrained import load_sampling_net
    from sddit.sampling import generate, load_decoder, quantize

    cfg, net = load_sampling_net(run)
    z = generate(
        net,
        torch.tensor([0]),
        [0],
        (4, 4, 4),
        num_steps=2,
        cfg_scale=cfg.eval.grid_cfg_scale,
        null_label=10,
        clamp=False,
    )
    tile = quantize(load_decoder(str(tiny_vae), 0.18215, "test", "cpu", 4)(z))[0].permute(1, 2, 0).numpy()
    grid = np.asarray(final)[4 : 4 + 2 * PIXELS : 2, 4 : 4 + 2 * PIXELS : 2]  # first tile, un-upscaled
    assert np.abs(grid.astype(int) - tile.astype(int)).max() <= 1


def test_tensorboard_has_the_metrics_scalars_and_the_grids(latent_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(latent_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    records = [json.loads(line) for line in (latent_run / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "loss_gen", "lr", "img_per_s", "fid"):
        logged = [(r["step"], r[key]) for r in records if key in r]
        events = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in events] == [s for s, _ in logged] and np.allclose(
            [v for _, v in events], [v for _, v in logged], rtol=1e-6
        )
    assert [e.step for e in acc.Images("samples")] == [2, 4]


def test_sample_eval_generate_decode_latent_checkpoints(latent_run, ref_folder, tiny_vae, tmp_path, capsys):
    run = latent_run
    png = tmp_path / "grid.png"
    assert main(["sample", str(run), "--out", str(png), "--steps", "2", "--per-class", "2", "--classes", "1,7"]) == 0
    assert Image.open(png).mode == "RGB" and Image.open(png).size == grid_size(2, 2)
    assert f"decoded by {tiny_vae}" in capsys.readouterr().out
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "eval",
                str(run),
                "--num-samples",
                "10",
                "--steps",
                "2",
                "--ref",
                str(ref_folder),
                "--json",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["num_samples"] == 10 and r["num_reference"] == 12 and r["fid"] > 0
    assert "10 samples vs 12 reference images" in capsys.readouterr().out
    assert (
        main(
            [
                "generate",
                str(run),
                "--out",
                str(tmp_path / "g"),
                "--num-samples",
                "3",
                "--steps",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "g" / "samples.npz")["arr_0"].shape == (3, PIXELS, PIXELS, 3)


def test_export_of_a_latent_run_samples_like_the_checkpoint(latent_run, tiny_vae, tmp_path):
    """A release records the VAE; sample/eval/generate/load_pretrained on it give the checkpoint's images."""
    import sddit

    release = tmp_path / "release"
    assert main(["export", str(latent_run), "--out", str(release)]) == 0
    meta = json.loads((release / "config.json").read_text())
    assert meta["latent"] is True and meta["vae"] == str(tiny_vae) and meta["scale_factor"] == 0.18215
    args = ["--num-samples", "4", "--steps", "2", "--batch-size", "4", "--balanced", "--device", "cpu"]
    assert main(["generate", str(latent_run), "--out", str(tmp_path / "a"), *args]) == 0
    assert main(["generate", str(release), "--out", str(tmp_path / "b"), *args]) == 0
    a = np.load(tmp_path / "a" / "samples.npz")["arr_0"]
    assert np.array_equal(a, np.load(tmp_path / "b" / "samples.npz")["arr_0"])
    model = sddit.load_pretrained(release, device="cpu")
    assert model.latent and model.num_classes == 10
    images = model.sample([0, 1, 2, 3], seed=0, steps=2, batch_size=4, output="uint8")
    assert images.shape == (4, 3, PIXELS, PIXELS) and images.dtype == torch.uint8
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), a)  # the same seeds and labels as generate --balanced
    floats = sddit.sample(model, [0, 1, 2, 3], steps=2, batch_size=4)
    assert floats.dtype == torch.float32 and -1 <= floats.min() and floats.max() <= 1
    from sddit.errors import CheckpointError
    from sddit.sampling.sources import load_source

    with pytest.raises(CheckpointError, match="only the sampling EMA"):  # a release has no raw weights to score
        load_source(release, weights="raw")


def test_latent_fid_without_a_reference_stops_before_training(latents, tmp_path, capsys):
    run = tmp_path / "noref"
    assert (
        main(["train", *latent_args(latents), "--run-dir", str(run), "--max-steps", "2", "--set", "train.fid_every=1"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "train.fid_ref=PATH" in err
    assert not (run / "checkpoints").exists()  # nothing trained
    assert (
        main(
            [
                "train",
                *latent_args(latents),
                "--run-dir",
                str(run),
                "--max-steps",
                "2",
                "--set",
                f"train.fid_ref={tmp_path / 'missing'}",
                "--set",
                "train.fid_every=1",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_latent_grid_needs_a_reachable_vae(latents, tmp_path, capsys):
    """Without the manifest's VAE (moved away) the run stops before training and names --vae; --vae fixes it."""
    moved = tmp_path / "latents"
    moved.mkdir()
    for p in latents.iterdir():
        (moved / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((moved / MANIFEST).read_text())
    vae = manifest["vae"]
    manifest["vae"] = str(tmp_path / "gone")
    (moved / MANIFEST).write_text(json.dumps(manifest))
    run = tmp_path / "r"
    assert (
        main(["train", *latent_args(moved), "--run-dir", str(run), "--max-steps", "2", "--set", "train.sample_every=2"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gone" in err and "does not exist" in err and not (run / "checkpoints").exists()
    assert (
        main(
            [
                "train",
                *latent_args(moved),
                "--run-dir",
                str(run),
                "--max-steps",
                "2",
                "--no-eval",
                "--set",
                "train.sample_every=2",
                "--vae",
                vae,
            ]
        )
        == 0
    )
    assert Image.open(run / "samples" / "step-0000002.png").mode == "RGB"


def test_fid_reference_as_folder_adm_npz_or_statistics_agree(latent_run, ref_folder, tmp_path):
    """The same 12 reference images as a folder, as an ADM-style .npz (arr_0) and as a statistics
    file (mu/sigma) give the same FID of the same samples."""
    from sddit.eval import InceptionFeatures, find_inception_weights, load_inception
    from sddit.eval.files import reference_statistics

    images = np.stack([np.asarray(Image.open(p)) for p in sorted(ref_folder.glob("*.png"))])
    np.savez(tmp_path / "ref_batch.npz", arr_0=images)
    weights = find_inception_weights()
    extractor = InceptionFeatures(load_inception(weights), batch_size=50, precision="bf16")  # eval.inception_precision
    mu, sigma, n = reference_statistics(ref_folder, extractor, weights, cache_dir=None, progress=False)
    assert n == 12 and mu.shape == (2048,)
    np.savez(tmp_path / "ref_stats.npz", mu=mu, sigma=sigma)
    fids = {}
    for name, ref in (
        ("folder", ref_folder),
        ("npz", tmp_path / "ref_batch.npz"),
        ("stats", tmp_path / "ref_stats.npz"),
    ):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eval",
                    str(latent_run),
                    "--num-samples",
                    "10",
                    "--steps",
                    "2",
                    "--ref",
                    str(ref),
                    "--json",
                    str(out),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        fids[name] = json.loads(out.read_text())
    assert (
        fids["folder"]["num_reference"] == fids["npz"]["num_reference"] == 12 and fids["stats"]["num_reference"] is None
    )
    assert fids["npz"]["fid"] == pytest.approx(fids["folder"]["fid"], rel=1e-6)
    assert fids["stats"]["fid"] == pytest.approx(fids["folder"]["fid"], rel=1e-6)
