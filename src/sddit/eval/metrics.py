"""The sample-quality metrics on Inception features: FID (and sFID on the spatial features),
Inception Score, improved precision/recall, and reference-statistics files.

Where they differ from ADM's evaluator:

* Frechet distance: ADM uses ``scipy.linalg.sqrtm``; we use eigenvalues (see
  :func:`frechet_distance`), which agrees to numerical precision and avoids sqrtm's failure modes.
* Inception Score takes logits/probabilities as input (the shipped Inception has no classifier).
* precision/recall: same k-NN manifold estimate (k=3) as ADM/Kynkaanniemi et al. 2019, with
  exact float32/float64 distances instead of ADM's float16 distance block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..runtime import atomic_write
from .inception import ArrayLike, InceptionFeatures


def _to_float64(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def feature_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N-1) covariance in float64, as pytorch-fid and ADM compute them.

    With N <= D (e.g. fewer than 2048 images) the covariance is rank deficient; FID is still
    defined but biased and noisy, which is why papers use 50k samples.
    """
    f = _to_float64(feats).numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N>=2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


@contextmanager
def _single_cpu_thread() -> Iterator[None]:
    """Run torch CPU ops single-threaded for a block, then restore the thread count.

    LAPACK's non-symmetric eigensolver (geev, used by eigvals) gains nothing from threads at
    D=2048 (3.0 s with 1 vs 2.8 s with 2 MKL threads on a 2-core CPU), but its many small
    OpenMP regions made it 20-70x slower when another process shared the cores.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1 s2)^(1/2))``, with the last trace computed as the
    sum of square roots of the eigenvalues of ``s1 @ s2`` (``torch.linalg.eigvals``, float64).
    Why not ``scipy.linalg.sqrtm`` as pytorch-fid/ADM do: sqrtm of the non-symmetric, often
    near-singular product is slow, can return complex or non-finite results (hence their
    retry-with-eps and imaginary-part checks) and we only need its trace anyway. For PSD s1, s2
    the product ``s1 s2`` has the same eigenvalues as the PSD matrix ``sqrt(s1) s2 sqrt(s1)``
    (AB and BA share eigenvalues), so they are real and >= 0; numerically they may come out with
    tiny imaginary parts or tiny negative values, so we keep the real part and clamp at 0.
    """
    m1, m2 = _to_float64(mu1).reshape(-1), _to_float64(mu2).reshape(-1)
    s1, s2 = _to_float64(sigma1), _to_float64(sigma2)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.numel(), m1.numel()):
        raise ValueError(f"shape mismatch: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")
    with _single_cpu_thread():
        eig = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0.0)
    value = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2.0 * eig.sqrt().sum()
    return float(value)


def fid_from_features(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """FID between two feature sets (pool features for FID, spatial features for sFID)."""
    return frechet_distance(*feature_stats(feats1), *feature_stats(feats2))


def compute_fid(
    images_a: ArrayLike | Iterable[ArrayLike],
    images_b: ArrayLike | Iterable[ArrayLike],
    model: torch.jit.ScriptModule | InceptionFeatures | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    resize: str = "tf",
    progress: bool = False,
) -> dict[str, float | int]:
    """FID between two image sets: ``{"fid": float, "num_a": N, "num_b": M}``.

    ``model`` may be a loaded TorchScript network (wrapped here with ``batch_size``/``device``/
    ``resize``), a ready :class:`InceptionFeatures` (used as is), or None to load the default.
    """
    extractor = (
        model
        if isinstance(model, InceptionFeatures)
        else InceptionFeatures(model, device=device, batch_size=batch_size, resize=resize, progress=progress)
    )
    feats_a, feats_b = extractor(images_a), extractor(images_b)
    return {"fid": fid_from_features(feats_a, feats_b), "num_a": len(feats_a), "num_b": len(feats_b)}


# Reference statistics use the layout of pytorch-fid's and ADM's reference ``.npz`` files: keys
# ``mu`` and ``sigma`` (float64), plus ADM's ``mu_s``/``sigma_s`` for the spatial (sFID) features.


def save_stats(
    path: str | Path,
    mu: ArrayLike,
    sigma: ArrayLike,
    *,
    mu_s: ArrayLike | None = None,
    sigma_s: ArrayLike | None = None,
) -> Path:
    """Cache reference statistics so the real-data pass runs once per dataset/resolution."""
    arrays = {"mu": mu, "sigma": sigma}
    if (mu_s is None) != (sigma_s is None):
        raise ValueError("pass both mu_s and sigma_s, or neither")
    if mu_s is not None:
        arrays |= {"mu_s": mu_s, "sigma_s": sigma_s}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as fh:  # atomic: parallel runs may share a cache; a handle keeps the name
        np.savez(fh, **{k: _to_float64(v).numpy() for k, v in arrays.items()})
    return out


def load_stats(path: str | Path, spatial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(mu, sigma)`` (or ADM's ``(mu_s, sigma_s)`` if ``spatial``) from a stats ``.npz``."""
    keys = ("mu_s", "sigma_s") if spatial else ("mu", "sigma")
    with np.load(path) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise KeyError(f"{path} lacks {missing}; has {data.files}")
        return data[keys[0]].astype(np.float64), data[keys[1]].astype(np.float64)


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


def _looks_like_probs(x: torch.Tensor) -> bool:
    return bool(
        x.min() >= 0 and x.max() <= 1 and torch.allclose(x.sum(1), torch.ones(len(x), dtype=x.dtype), atol=1e-4)
    )


def inception_score(
    logits_or_probs: ArrayLike, splits: int = 10, from_logits: bool | None = None
) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))``: mean and std over ``splits`` chunks.

    Takes class logits or probabilities (N, C) rather than images because the TorchScript
    Inception we ship has no classifier head (it ends at pool features); feed it the logits of
    a classifier (ADM uses the 1008-way head of the TF graph). ``from_logits=None`` treats the
    input as probabilities when every row is non-negative, <= 1 and sums to 1, else as logits;
    pass True/False to skip the guess. Chunks follow ``np.array_split`` (all samples used), as
    the improved-GAN code with splits=10; the std uses ddof=0 like that code.
    """
    x = _to_float64(logits_or_probs)
    if x.ndim != 2 or len(x) < splits:
        raise ValueError(f"need (N >= splits, C) scores, got shape {tuple(x.shape)} with splits={splits}")
    use_logits = not _looks_like_probs(x) if from_logits is None else from_logits
    probs = x.softmax(dim=1) if use_logits else x
    scores = [_split_score(part) for part in torch.tensor_split(probs, splits)]
    return float(np.mean(scores)), float(np.std(scores))


def _split_score(probs: torch.Tensor) -> float:
    """exp of the mean KL between each p(y|x) and the chunk's marginal p(y); 0 log 0 = 0."""
    marginal = probs.mean(dim=0, keepdim=True)
    kl = torch.xlogy(probs, probs) - torch.xlogy(probs, marginal)
    return math.exp(float(kl.sum(dim=1).mean()))


# --------------------------------------------------------------------------------------------
# Improved precision and recall (Kynkaanniemi et al. 2019)
# --------------------------------------------------------------------------------------------


def _knn_radii(feats: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in its own set, self excluded.

    Each row's smallest distance is the point to itself (0), so the k-th neighbour is entry k
    of the k+1 smallest distances.
    """
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} points to estimate k-NN radii, got {len(feats)}")
    radii = [
        torch.cdist(feats[i : i + batch_size], feats).topk(k + 1, dim=1, largest=False).values[:, k]
        for i in range(0, len(feats), batch_size)
    ]
    return torch.cat(radii)


def _manifold_coverage(points: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``points`` inside at least one ball ``B(ref_i, ref_radii_i)``."""
    inside = [
        (torch.cdist(points[i : i + batch_size], ref) <= ref_radii[None, :]).any(dim=1)
        for i in range(0, len(points), batch_size)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real_feats: ArrayLike,
    fake_feats: ArrayLike,
    k: int = 3,
    batch_size: int = 10000,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), k=3 as in ADM.

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour in the same set. Precision: fraction of fake points inside the
    real manifold; recall: fraction of real points inside the fake manifold. Distances use
    ``torch.cdist`` in row blocks of ``batch_size`` so memory is O(batch_size * N).
    """
    real = _to_float64(real_feats).to(device, dtype)
    fake = _to_float64(fake_feats).to(device, dtype)
    if real.ndim != 2 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"need (N, D) and (M, D) features, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real_radii = _knn_radii(real, k, batch_size)
    fake_radii = _knn_radii(fake, k, batch_size)
    precision = _manifold_coverage(fake, real, real_radii, batch_size)
    recall = _manifold_coverage(real, fake, fake_radii, batch_size)
    return precision, recall
