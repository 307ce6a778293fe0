"""`sddit prepare` (image folder -> VAE moments shards + manifest) and `LatentDataset`, on a tiny random VAE."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sddit import cli, cli_parser
from sddit.data import image_folder
from sddit.data import prepare as prep
from sddit.models import vae
from sddit.errors import DataError
from sddit.data.latents import LatentDataset
from sddit.data.latent_format import read_manifest

SIZE = 32  # pixels; the tiny VAE downsamples 8x -> 4x4 latents


@pytest.fixture(scope="module")
def vae_dir(tiny_vae):
    """The session's tiny random VAE (tests/conftest.py)."""
    return tiny_vae


def _rand(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """3 classes, 13 readable images (varied sizes and modes) + 1 corrupt JPEG."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images") / "train"
    for name in ("a_cat", "b_dog", "c_eel"):
        (root / name).mkdir(parents=True)
    Image.fromarray(_rand(rng, 40, 50)).save(root / "a_cat" / "1.png")
    Image.fromarray(_rand(rng, 70, 48)).save(root / "a_cat" / "2.JPEG")
    Image.fromarray(_rand(rng, 33, 100)).save(root / "a_cat" / "3.jpg")
    Image.fromarray(_rand(rng, 20, 24)).save(root / "a_cat" / "4.png")  # smaller than 32: upscaled
    Image.fromarray(_rand(rng, 64, 64, 1), mode="L").save(root / "a_cat" / "5.png")  # grey
    Image.fromarray(_rand(rng, 48, 40, 4), mode="RGBA").save(root / "b_dog" / "1.png")  # RGBA
    Image.fromarray(_rand(rng, 36, 36)).convert("P").save(root / "b_dog" / "2.png")  # palette
    Image.fromarray(_rand(rng, 40, 40)).convert("CMYK").save(root / "b_dog" / "3.jpg")  # CMYK JPEG
    Image.fromarray(_rand(rng, 128, 96)).save(root / "b_dog" / "4.jpeg")
    (root / "b_dog" / "5.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())  # corrupt
    (root / "b_dog" / "notes.txt").write_text("not an image")
    for i in range(4):
        Image.fromarray(_rand(rng, 32 + 8 * i, 40)).save(root / "c_eel" / f"{i}.png")
    return root


PREP = dict(image_size=SIZE, batch_size=4, progress=False, max_bad_fraction=0.2, num_workers=0, shard_size=3)


@pytest.fixture(scope="module")
def single(image_root, vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lat1")
    summary = prep.prepare(image_root, out, vae=str(vae_dir), **PREP)
    return out, summary


def _load_all(out, manifest):
    arrays = [np.load(out / sh["file"]) for sh in manifest["shards"]]
    cat = {k: np.concatenate([a[k] for a in arrays]) for k in ("moments", "labels", "flips", "source")}
    order = np.lexsort((cat["flips"], cat["source"]))
    return {k: v[order] for k, v in cat.items()}


# --------------------------------------------------------------------------------------------------


def test_center_crop_size_and_centre():
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30, 0] = 255  # red | green | blue, left to right
    stripes[:, 30:60, 1] = 255
    stripes[:, 60:, 2] = 255
    out = image_folder.center_crop_arr(Image.fromarray(stripes), 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert (out[..., 1] == 255).all() and (out[..., 0] == 0).all() and (out[..., 2] == 0).all()
    tall = image_folder.center_crop_arr(
        Image.fromarray(stripes.transpose(1, 0, 2).copy()), 16
    )  # 90 tall: BOX then bicubic
    assert tall.shape == (16, 16, 3) and tall[4:12, :, 1].min() > 200 and tall[4:12, :, 0].max() < 50
    assert image_folder.center_crop_arr(Image.fromarray(_rand(np.random.default_rng(1), 300, 200)), SIZE).shape == (
        SIZE,
        SIZE,
        3,
    )
    assert image_folder.center_crop_arr(Image.fromarray(_rand(np.random.default_rng(1), 10, 12)), SIZE).shape == (
        SIZE,
        SIZE,
        3,
    )


def test_scan_image_folder(image_root, tmp_path):
    files, labels, classes = image_folder.scan_image_folder(image_root)
    assert classes == ["a_cat", "b_dog", "c_eel"]
    assert len(files) == 14 and labels == [0] * 5 + [1] * 5 + [2] * 4  # notes.txt is not an image
    with pytest.raises(DataError, match="not found"):
        image_folder.scan_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        image_folder.scan_image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images.*\.jpeg") as e:
        image_folder.scan_image_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_prepare_single_rank_counts_and_shards(single):
    out, summary = single
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert (c["files"], c["images"], c["entries"], c["flips"], c["bad"]) == (14, 13, 26, 13, 1)
    assert c["upscaled"] == 1 and c["too_small"] == 0
    assert c["converted"] == {"CMYK": 1, "L": 1, "P": 1, "RGBA": 1}
    assert m["class_names"] == ["a_cat", "b_dog", "c_eel"] and m["num_classes"] == 3
    assert m["latent_shape"] == [4, 4, 4] and m["resolution"] == SIZE and m["scale_factor"] == pytest.approx(0.18215)
    assert "5.jpg" in m["bad_examples"][0]
    assert [sh["file"] for sh in m["shards"]] == [f"shard-r000-{k:05d}.npz" for k in range(5)]  # 14 files / 3
    assert sum(sh["entries"] for sh in m["shards"]) == 26
    a = _load_all(out, m)
    assert a["moments"].dtype == np.float16 and a["moments"].shape == (26, 8, 4, 4)
    files, labels, _ = image_folder.scan_image_folder(m["source_root"])
    assert (a["labels"] == np.array(labels)[a["source"]]).all()
    assert a["flips"].sum() == 13 and 9 not in a["source"]  # file 9 is the corrupt one
    # each flip entry is the encoding of the mirrored image, not a copy of the original
    assert not np.allclose(a["moments"][0::2], a["moments"][1::2])
    assert not list(out.glob(".*tmp*"))


def test_prepare_two_ranks_equal_single(single, image_root, vae_dir, tmp_path):
    out1, _ = single
    s0 = prep.prepare(image_root, tmp_path, vae=str(vae_dir), rank=0, world_size=2, **PREP)
    assert "manifest" not in s0 and not (tmp_path / "manifest.json").exists()  # rank 1 not done yet
    s1 = prep.prepare(image_root, tmp_path, vae=str(vae_dir), rank=1, world_size=2, **PREP)
    assert "manifest" not in s1  # only rank 0 (or merge) writes the manifest
    names0 = {sh["file"] for sh in s0["shards"]}
    names1 = {sh["file"] for sh in s1["shards"]}
    assert not names0 & names1 and all(n.startswith("shard-r001") for n in names1)
    m2 = prep.merge(tmp_path)
    assert read_manifest(tmp_path)["counts"] == m2["counts"]
    m1 = json.loads((out1 / "manifest.json").read_text())
    assert m2["counts"] == m1["counts"] and m2["world_size"] == 2 and len(m2["per_rank"]) == 2
    a1, a2 = _load_all(out1, m1), _load_all(tmp_path, m2)
    assert (a1["source"] == a2["source"]).all() and (a1["labels"] == a2["labels"]).all()
    assert (a1["flips"] == a2["flips"]).all()
    np.testing.assert_allclose(a1["moments"].astype(np.float32), a2["moments"].astype(np.float32), atol=2e-3)


def test_resume_skips_finished_shards(single, image_root, vae_dir, monkeypatch, tmp_path):
    out = tmp_path / "lat"
    prep.prepare(image_root, out, vae=str(vae_dir), **PREP)
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.npz")}

    def boom(*a, **k):
        raise AssertionError("re-encoded a finished shard")

    monkeypatch.setattr(prep, "encode_moments", boom)
    s = prep.prepare(image_root, out, vae=str(vae_dir), **PREP)
    assert s["manifest"]["counts"] == json.loads((single[0] / "manifest.json").read_text())["counts"]
    assert before == {p.name: p.read_bytes() for p in out.glob("shard-*.npz")}


def test_latent_dataset_resamples_posterior(single):
    out, _ = single
    ds = LatentDataset(out)
    assert len(ds) == 26 and ds.shape == (4, 4, 4) and ds.num_classes == 3
    assert ds.class_names == ("a_cat", "b_dog", "c_eel")
    idx = torch.tensor([0, 5, 7])
    x1, y1 = ds.batch(idx)
    x2, y2 = ds.batch(idx)
    assert x1.shape == (3, 4, 4, 4) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert (y1 == y2).all() and not torch.allclose(x1, x2)  # fresh posterior sample per call
    g = torch.Generator().manual_seed(3)
    mean = torch.stack([ds.batch(idx, generator=g)[0] for _ in range(400)]).mean(0)
    moments, labels = ds.read(idx)  # memory-mapped rows == what np.load reads, in the manifest's shard order
    shards = [np.load(out / sh["file"]) for sh in read_manifest(out)["shards"]]
    raw = {k: np.concatenate([z[k] for z in shards]) for k in ("moments", "labels")}
    assert moments.dtype == torch.float16 and np.array_equal(moments.numpy(), raw["moments"][idx.numpy()])
    assert np.array_equal(labels.numpy(), raw["labels"][idx.numpy()]) and (labels == y1).all()
    big = torch.tensor([25, 0, 13, 3, 3, 24])  # unsorted, repeated, spanning every shard
    assert np.array_equal(ds.read(big)[0].numpy(), raw["moments"][big.numpy()])
    target = moments.float()[:, :4] * 0.18215
    std = torch.exp(0.5 * moments.float()[:, 4:]) * 0.18215
    assert ((mean - target).abs() <= 5 * std / 20 + 1e-4).all()  # 400 draws: standard error = std / 20
    assert torch.allclose(ds.mean_latents(idx), target)
    assert ds.batch(idx, hflip=torch.zeros(3, dtype=torch.bool))[0].shape == (3, 4, 4, 4)
    with pytest.raises(DataError, match="hflip"):
        ds.batch(idx, hflip=torch.tensor([True, False, False]))


def test_latent_dataset_reads_rows_from_the_mapped_files(single, tmp_path):
    """Shards are mapped, not loaded: bytes changed on disk after the dataset was built are what a
    batch reads, and a compressed shard (which cannot be mapped) is refused with the fix."""
    from sddit.data.latent_format import stored_npy_members

    src, _ = single
    for p in src.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    ds = LatentDataset(tmp_path)
    first = read_manifest(tmp_path)["shards"][0]["file"]
    member = stored_npy_members(tmp_path / first, ("moments",))["moments"]
    before = ds.read(torch.tensor([1]))[0]
    row = member.nbytes // member.shape[0]
    new = np.full(member.shape[1:], 0.25, np.float16)
    with open(tmp_path / first, "r+b") as f:  # overwrite entry 1's moments in place
        f.seek(member.offset + row)
        f.write(new.tobytes())
    after = ds.read(torch.tensor([1]))[0]
    assert not torch.equal(before, after) and (after == 0.25).all()
    with pytest.raises(IndexError):
        ds.read(torch.tensor([len(ds)]))

    with np.load(src / first) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(tmp_path / first, **arrays)
    with pytest.raises(DataError) as e:
        LatentDataset(tmp_path)
    _one_line(e, first, "compressed", "np.savez")


def test_cli_parser_and_merge(single, image_root, vae_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli_parser.add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "prepare",
            str(image_root),
            str(tmp_path),
            "--image-size",
            str(SIZE),
            "--vae",
            str(vae_dir),
            "--no-flip",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--max-bad-fraction",
            "0.2",
            "--no-progress",
            "--workers",
            "2",
        ]
    )
    assert cli.cmd_prepare(args) == 0
    m = read_manifest(tmp_path)
    assert m["hflip"] is False and m["counts"]["entries"] == 13 and m["counts"]["flips"] == 0
    assert "wrote" in capsys.readouterr().out
    args = parser.parse_args(["prepare", str(image_root), str(tmp_path), "--merge", "--max-bad-fraction", "0.2"])
    assert cli.cmd_prepare(args) == 0


# --------------------------------------------------------------------------------------------------
# errors: one line, saying what is wrong and how to fix it


def _one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_error_missing_and_empty_folder(vae_dir, tmp_path):
    with pytest.raises(DataError) as e:
        prep.prepare(tmp_path / "missing", tmp_path / "out", vae=str(vae_dir), **PREP)
    _one_line(e, "not found", "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        prep.prepare(tmp_path / "empty", tmp_path / "out", vae=str(vae_dir), **PREP)
    _one_line(e, "no class sub-folders")


def test_error_vae_path_and_offline_hub(tmp_path):
    with pytest.raises(DataError) as e:
        vae.load_vae(str(tmp_path / "no_vae"))
    _one_line(e, "does not exist", "no_vae", "save_pretrained")
    (tmp_path / "not_vae").mkdir()
    with pytest.raises(DataError) as e:
        vae.load_vae(str(tmp_path / "not_vae"))
    _one_line(e, "config.json")
    with pytest.raises(DataError) as e:  # local_files_only: the offline failure, without waiting on the network
        vae.load_vae("stabilityai/sd-vae-ft-ema", local_files_only=True)
    _one_line(e, "Hugging Face Hub", "local directory", "--vae DIR")


def test_error_too_many_bad_images(image_root, vae_dir, tmp_path):
    with pytest.raises(DataError) as e:
        prep.prepare(image_root, tmp_path, vae=str(vae_dir), **dict(PREP, max_bad_fraction=0.01))
    _one_line(e, "1 of rank 0's 14 images", "unreadable", "5.jpg", "--max-bad-fraction")
    assert not (tmp_path / "manifest.json").exists()


def test_min_size_rejects_small_images(image_root, vae_dir, tmp_path):
    s = prep.prepare(image_root, tmp_path, vae=str(vae_dir), min_size=SIZE, hflip_copies=False, **PREP)
    c = s["manifest"]["counts"]
    assert (c["too_small"], c["upscaled"], c["images"], c["bad"]) == (1, 0, 12, 1)


def test_error_missing_manifest_and_truncated_shard(single, tmp_path):
    with pytest.raises(DataError) as e:
        LatentDataset(tmp_path)
    _one_line(e, "manifest.json", "sddit prepare")
    src, _ = single
    for p in src.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    shard = tmp_path / "shard-r000-00002.npz"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(DataError) as e:
        LatentDataset(tmp_path)
    _one_line(e, "shard-r000-00002.npz", "truncated")
    shard.unlink()
    with pytest.raises(DataError) as e:
        LatentDataset(tmp_path)
    _one_line(e, "missing")


def test_train_on_prepared_latents(single, tmp_path):
    """`sddit prepare` output feeds `sddit train` directly (dataset=latents), for each objective."""
    from sddit.cli import main

    out, manifest = single
    C, h, w = manifest["latent_shape"]
    for objective in ("dit", "sddit"):
        run = tmp_path / objective
        rc = main(
            [
                "train",
                "--config",
                "digits_tiny",
                "--run-dir",
                str(run),
                "--max-steps",
                "4",
                "--no-eval",
                "--set",
                f"objective={objective}",
                "--set",
                "data.dataset=latents",
                "--set",
                f"data.root={out}",
                "--set",
                f"model.in_channels={C}",
                "--set",
                f"model.input_size={h}",
                "--set",
                "model.num_classes=3",
                "--set",
                "train.batch_size=8",
                "--set",
                "train.log_every=2",
            ]
        )
        assert rc == 0
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2 and '"loss"' in lines[-1]
