"""The FID reference features that ship with the package (`sddit/eval/shipped.py`): used only for the
exact images, Inception file and settings they were computed from, and only when this machine's
Inception reproduces their first rows; otherwise the full pass runs."""

import json

import numpy as np
import pytest
import torch

from sddit.config import load_config
from sddit.data import build_dataset
from sddit.eval import find_inception_weights, shipped
from sddit.eval.generator import inception_extractor, reference_stats
from sddit.eval.inception import inception_id
from sddit.eval.metrics import feature_stats
from sddit.seeding import reference_subset

N = 24  # reference images in the test's shipped file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config("digits_tiny", ["eval.inception_precision=bf16"])
    weights = find_inception_weights()
    extractor = inception_extractor(cfg, weights, "cpu")
    ds = build_dataset("digits", "", cfg.eval.reference)
    path = tmp_path_factory.mktemp("refs") / "digits-test.npz"
    meta = shipped.write(path, ds.images[reference_subset(len(ds), N)], extractor, weights)
    return cfg, weights, extractor, ds, path, meta


class Counting:
    """An extractor that records how many images it was asked for."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0
        self.resize, self.precision = inner.resize, inner.precision

    def __call__(self, images):
        self.images += len(images)
        return self.inner(images)


def test_shipped_features_are_the_full_pass_and_serve_any_prefix(setup):
    cfg, weights, extractor, ds, path, meta = setup
    full = extractor(ds.images[reference_subset(len(ds), N)])
    counting = Counting(extractor)
    got = shipped.load(path, ds.images, 10, counting, weights)
    assert got.shape == (10, 2048) and counting.images == shipped.CHECK  # 10 checked, none else computed
    assert shipped.relative_error(full[:10], got) < 2e-3  # float16 storage
    assert shipped.load(path, ds.images, N, extractor, weights).shape == (N, 2048)
    assert shipped.load(path, ds.images, N + 1, extractor, weights) is None  # more than it holds
    assert meta["inception"] == inception_id(weights) and meta["num_images"] == N


def test_other_images_settings_or_inception_are_not_served(setup):
    cfg, weights, extractor, ds, path, meta = setup
    other = ds.images.clone()
    other[reference_subset(len(ds), N)[3], 0, 4, 4] ^= 1  # one pixel of one reference image
    assert shipped.load(path, other, 10, extractor, weights) is None
    fp32 = inception_extractor(load_config("digits_tiny", ["eval.inception_precision=fp32"]), weights, "cpu")
    assert shipped.load(path, ds.images, 10, fp32, weights) is None
    assert shipped.load(path.with_name("absent.npz"), ds.images, 10, extractor, weights) is None
    path.with_name("garbage.npz").write_bytes(b"not a zip")
    assert shipped.load(path.with_name("garbage.npz"), ds.images, 10, extractor, weights) is None


def test_features_this_inception_does_not_reproduce_are_not_served(setup, tmp_path):
    cfg, weights, extractor, ds, path, meta = setup
    with np.load(path) as f:
        feats = f["features"].astype(np.float32)
    bad = tmp_path / "digits-test.npz"  # same metadata, features 5% off: as from another network
    np.savez_compressed(bad, features=(feats * 1.05).astype(np.float16), meta=np.array(json.dumps(meta)))
    assert shipped.load(bad, ds.images, 10, extractor, weights) is None


def test_reference_stats_use_the_shipped_file(setup, monkeypatch, tmp_path):
    cfg, weights, extractor, ds, path, meta = setup
    monkeypatch.setattr(shipped, "FOLDER", path.parent)
    monkeypatch.setenv("SDDIT_CACHE", str(tmp_path))  # statistics cached by an earlier test would skip the file
    counting = Counting(extractor)
    mu, sigma, num = reference_stats(cfg, 20, counting, weights)
    assert num == 20 and counting.images == shipped.CHECK
    with np.load(path) as f:
        want = feature_stats(f["features"][:20].astype(np.float64))
    np.testing.assert_allclose(mu, want[0]) and np.testing.assert_allclose(sigma, want[1])


def test_the_default_runs_shipped_reference_matches_the_pinned_inception():
    """The file in the package was made with the Inception file and settings the default run uses
    (its images' digest is checked against the dataset at run time, where the dataset is)."""
    cfg = load_config("fmnist_dit", [])
    path = shipped.path_for(cfg.data.dataset, cfg.data.resolution, cfg.eval.reference)
    with np.load(path) as f:
        meta, feats = json.loads(str(f["meta"])), f["features"]
    weights = find_inception_weights()
    assert meta["inception"] == inception_id(weights)
    assert (meta["resize"], meta["precision"]) == ("tf", cfg.eval.inception_precision)
    assert feats.shape == (cfg.eval.num_samples, 2048) and feats.dtype == np.float16
    assert torch.isfinite(torch.from_numpy(feats.astype(np.float32))).all()
