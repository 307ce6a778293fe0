"""A researcher's first latent run (issue 25), on the tiny local VAE of conftest.py: the FID reference
is checked and scored before step 0, outputs are portable and readable by a team, a run resumes from
its directory alone, shapes come from the data, and resumed logs hold each step once."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_latent_runs import PIXELS, latent_args, write_latent_folder

from sddit.cli import main


@pytest.fixture(scope="module")
def latents(tiny_vae, tmp_path_factory):
    return write_latent_folder(tmp_path_factory.mktemp("lat") / "latents", tiny_vae)


def photo_folder(root, sizes, seed=0):
    """Photos as ImageNet val holds them: one folder, mixed sizes and aspect ratios, grey and RGB."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        shape = (h, w) if i % 3 == 0 else (h, w, 3)  # every third grey
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


MIXED = [(PIXELS, PIXELS), (50, 40), (33, 71), (120, 90), (20, 20), (64, 64), (45, 32), (32, 45)]


def test_a_mixed_size_reference_folder_is_cropped_like_adm_and_scored_before_step_0(latents, tmp_path, capsys):
    from sddit.data.image_folder import center_crop_arr
    from sddit.eval import InceptionFeatures, find_inception_weights, load_inception
    from sddit.eval.files import reference_statistics

    ref = photo_folder(tmp_path / "val", MIXED)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *latent_args(latents),
                "--run-dir",
                str(run),
                "--max-steps",
                "2",
                "--no-eval",
                "--set",
                "train.fid_every=2",
                "--set",
                "train.fid_samples=4",
                "--set",
                f"train.fid_ref={ref}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    ready, first_step = out.index("FID reference ready"), out.index("saved ")
    assert ready < first_step and f"centre-cropped to {PIXELS}x{PIXELS}" in out
    fids = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "fid" in line]
    assert [r["step"] for r in fids] == [2] and np.isfinite(fids[0]["fid"])
    # the statistics are those of ADM's centre crops at the run's resolution, cached for the next run
    weights = find_inception_weights()
    extractor = InceptionFeatures(load_inception(weights), batch_size=50, precision="bf16")
    crops = []
    for p in sorted(ref.iterdir()):
        with Image.open(p) as img:
            rgb = img.convert("RGB")
            crops.append(np.asarray(rgb) if rgb.size == (PIXELS, PIXELS) else center_crop_arr(rgb, PIXELS))
    from sddit.eval import feature_stats

    mu, _ = feature_stats(extractor(np.stack(crops)))
    cached = reference_statistics(ref, extractor, weights, cache_dir=None, progress=False, size=PIXELS)
    assert np.allclose(cached[0], mu, atol=1e-4) and cached[2] == len(MIXED)
    assert list(Path(os.environ["SDDIT_CACHE"]).glob("fidref-*.npz"))  # the next run reads them back


def test_an_unreadable_reference_image_stops_the_run_before_step_0(latents, tmp_path, capsys):
    ref = photo_folder(tmp_path / "val", MIXED[:3])
    (ref / "broken.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *latent_args(latents),
                "--run-dir",
                str(run),
                "--max-steps",
                "2",
                "--no-eval",
                "--set",
                "train.fid_every=2",
                "--set",
                "train.fid_samples=4",
                "--set",
                f"train.fid_ref={ref}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the reference's progress bar
    assert err.startswith("error: ") and "broken.jpg" in err
    assert not (run / "checkpoints").exists()  # nothing trained, nothing lost


def test_a_due_checkpoint_is_written_before_the_fid_of_its_step(latents, tmp_path, monkeypatch, capsys):
    from sddit.train.monitor import Monitor

    ref = photo_folder(tmp_path / "val", MIXED[:4])

    def dies(self, net, n):
        raise KeyboardInterrupt  # the FID of step 2 is killed (a node lost, a ^C)

    monkeypatch.setattr(Monitor, "fid", dies)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *latent_args(latents),
                "--run-dir",
                str(run),
                "--max-steps",
                "4",
                "--no-eval",
                "--set",
                "train.ckpt_every=2",
                "--set",
                "train.fid_every=2",
                "--set",
                "train.fid_samples=4",
                "--set",
                f"train.fid_ref={ref}",
            ]
        )
        == 130
    )
    assert [p.name for p in sorted((run / "checkpoints").glob("ckpt-*.pt"))] == ["ckpt-0000002.pt"]


def test_a_run_resumes_from_its_directory_alone_despite_speed_switches(latents, tmp_path, capsys):
    """`sddit train --run-dir RUN` takes RUN's own config (objective, data, model); switches that change
    only speed or monitoring may differ; `--config RUN/config.json` reads the JSON."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *latent_args(latents),
                "--run-dir",
                str(run),
                "--max-steps",
                "2",
                "--no-eval",
                "--set",
                "objective=sddit",
                "--set",
                "sddit.mask_ratio=0.3",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(run),
                "--max-steps",
                "4",
                "--no-eval",
                "--set",
                "model.grad_checkpointing=true",
                "--set",
                "train.num_threads=2",
                "--set",
                "train.tf32=false",
                "--set",
                "train.compile=false",
                "--set",
                "train.loggers=[jsonl,tensorboard]",
                "--set",
                "train.log_every=1",
                "--set",
                "train.sample_every=4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "resumed from" in out and "ckpt-0000002.pt at step 2" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective"] == "sddit" and cfg["sddit"]["mask_ratio"] == 0.3 and cfg["train"]["max_steps"] == 4
    assert cfg["model"]["grad_checkpointing"] is True and (run / "samples" / "step-0000004.png").is_file()
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [list(c["changes"]) for c in changes] == [["train.max_steps"]]  # the speed switches are not changes
    assert (
        main(["train", "--config", str(run / "config.json"), "--run-dir", str(run), "--max-steps", "5", "--no-eval"])
        == 0
    )
    assert (run / "checkpoints" / "ckpt-0000005.pt").is_file()
    capsys.readouterr()
    # what changes the function still needs the flag, in one line
    assert main(["train", "--run-dir", str(run), "--max-steps", "6", "--no-eval", "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.lr" in err and "--allow-config-change" in err


def test_json_configs_load_and_report_their_errors(tmp_path):
    from sddit.config import load_config
    from sddit.errors import ConfigError

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "digits_tiny", "train": {"lr": 0.002}}))
    cfg = load_config(str(path))
    assert cfg.train.lr == 0.002 and cfg.model.input_size == 8
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(str(path))


@pytest.fixture
def umask_0022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_are_portable_and_readable_by_the_team(tiny_vae, tmp_path, monkeypatch, umask_0022):
    """`sddit prepare --vae tiny_vae` (a relative folder) records it absolutely, so a release loads from
    any directory; every file prepare, train, export and generate write is 0644 under umask 0022."""
    import shutil

    import sddit

    work = tmp_path / "work"
    (work / "photos" / "cat").mkdir(parents=True)
    (work / "photos" / "dog").mkdir()
    for i, (w, h) in enumerate(MIXED[:6]):
        Image.new("RGB", (w, h), (40 * i, 100, 200)).save(work / "photos" / ("cat", "dog")[i % 2] / f"{i}.png")
    shutil.copytree(tiny_vae, work / "tiny_vae")
    monkeypatch.chdir(work)
    assert (
        main(
            [
                "prepare",
                "photos",
                "latents",
                "--vae",
                "tiny_vae",
                "--image-size",
                str(PIXELS),
                "--workers",
                "0",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = json.loads((work / "latents" / "manifest.json").read_text())
    assert manifest["vae"] == str((work / "tiny_vae").resolve())
    assert (
        main(
            [
                "train",
                *latent_args("latents"),
                "--run-dir",
                "run",
                "--max-steps",
                "2",
                "--no-eval",
                "--set",
                "model.num_classes=2",
                "--set",
                "train.batch_size=8",
                "--set",
                "train.sample_every=2",
                "--set",
                "train.sample_classes=2",
                "--set",
                "train.sample_per_class=1",
                "--set",
                "train.loggers=[jsonl,tensorboard]",
            ]
        )
        == 0
    )
    assert main(["export", "run", "--out", "release"]) == 0
    assert main(["generate", "release", "--out", "gen", "--num-samples", "2", "--steps", "2", "--device", "cpu"]) == 0
    assert json.loads((work / "release" / "config.json").read_text())["vae"] == str((work / "tiny_vae").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    images = sddit.load_pretrained(work / "release", device="cpu").sample([0, 1], steps=2, output="uint8")
    assert images.shape == (2, 3, PIXELS, PIXELS)
    modes = {
        str(p.relative_to(work)): stat.S_IMODE(p.stat().st_mode)
        for p in work.rglob("*")
        if p.is_file() and "tiny_vae" not in p.parts and "photos" not in p.parts
    }
    assert any(k.startswith("run/checkpoints/") for k in modes) and any(k.startswith("latents/shard") for k in modes)
    assert any(k.startswith("run/tensorboard/") for k in modes) and "gen/samples.npz" in modes
    assert {k: m for k, m in modes.items() if m != 0o644} == {}


def test_a_vae_that_is_neither_here_nor_reachable_fails_at_once_naming_the_path(tmp_path, monkeypatch):
    import time

    from sddit.errors import DataError
    from sddit.models.vae import load_vae

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: the Hub is unreachable
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_vae("tiny_vae")  # a folder the user meant, in another directory
    assert time.perf_counter() - start < 10  # not huggingface_hub's ~30 s of retries
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "tiny_vae") in msg and "cannot be reached" in msg and "--vae DIR" in msg


def test_shapes_the_data_knows_are_taken_from_it_and_a_chosen_mismatch_is_one_line(tiny_vae, tmp_path, capsys):
    lat = write_latent_folder(tmp_path / "three", tiny_vae, classes=3)
    base = [
        "train",
        "--config",
        "digits_tiny",
        "--device",
        "cpu",
        "--set",
        "data.dataset=latents",
        "--set",
        f"data.root={lat}",
        "--set",
        "train.num_threads=1",
        "--max-steps",
        "1",
        "--no-eval",
    ]
    assert main([*base, "--run-dir", str(tmp_path / "run")]) == 0  # the preset says 8x8x1 pixels, 10 classes
    assert "model.num_classes=3 (the config had 10)" in capsys.readouterr().out
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model["in_channels"], model["input_size"], model["num_classes"]) == (4, 4, 3)
    from sddit.pretrained import load_sampling_net

    cfg, net = load_sampling_net(tmp_path / "run")
    assert net.model.y_embedder.embedding_table.num_embeddings == 3 + 1  # 3 classes and the null label
    assert main([*base, "--run-dir", str(tmp_path / "run2"), "--set", "model.num_classes=1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.num_classes=1000" in err and "num_classes=3" in err
    assert not (tmp_path / "run2" / "checkpoints").exists()


def tb_scalar_steps(run, tag):
    """Every (step) of `tag` in the raw event files, as any reader of the files sees them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_the_run_says_what_it_is_and_a_resume_leaves_each_step_once_in_tensorboard(tmp_path, monkeypatch, capsys):
    import time

    from sddit.train.monitor import Monitor

    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        "digits_tiny",
        "--device",
        "cpu",
        "--run-dir",
        str(run),
        "--no-eval",
        "--set",
        "train.log_every=1",
        "--set",
        "train.ckpt_every=2",
        "--set",
        "train.keep_last=5",
        "--set",
        "train.loggers=[jsonl,tensorboard]",
        "--set",
        "train.num_threads=1",
        "--max-steps",
        "4",
    ]
    grid = Monitor.grid

    def slow_grid(self, *a, **k):
        time.sleep(1.5)  # a grid or FID that takes long: not training time
        return grid(self, *a, **k)

    monkeypatch.setattr(Monitor, "grid", slow_grid)
    assert main([*args, "--set", "train.sample_every=1"]) == 0
    out = capsys.readouterr().out
    banner = next(line for line in out.splitlines() if line.startswith("sddit train:"))
    for words in (
        "dit model",
        "M parameters",
        "1x8x8 input",
        "10 classes",
        "digits entries",
        "1 process on cpu",
        "fp32",
        "batch 32 (32 per process)",
        "steps 0 -> 4",
    ):
        assert words in banner, (words, banner)
    speeds = [
        json.loads(line)["img_per_s"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "img_per_s" in line
    ]
    assert len(speeds) == 4 and min(speeds) > 32 / 1.5  # the 1.5 s grids are not in the windows
    # killed after step 4 but before its checkpoint: the resumed run logs steps 3 and 4 again
    (run / "checkpoints" / "ckpt-0000004.pt").unlink()
    assert tb_scalar_steps(run, "loss") == [1, 2, 3, 4]
    assert main(args) == 0
    assert "resumed from" in capsys.readouterr().out
    assert tb_scalar_steps(run, "loss") == [1, 2, 3, 4]  # not [1, 2, 3, 3, 4, 4]
    assert [
        json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line
    ] == [1, 2, 3, 4]
