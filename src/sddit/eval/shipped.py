"""Inception features of the default run's FID reference, shipped with the package.

Why: on a fresh machine the first `sddit train` would spend ~2 of its ~15 minutes on the Inception
pass over the 1,000 fixed Fashion-MNIST test images that every run is scored against. The file
`references/{dataset}{resolution}-{split}.npz` holds the pool features (float16, (N, 2048)) of the
first N images of `seeding.reference_subset`, and what they were computed from: a SHA-256 of those
images' bytes, the Inception file's name and size, the resize mode and the precision.

They are used only when all of these match, and after the first `CHECK` images are run through this
machine's Inception and agree with the shipped rows to `TOLERANCE` (relative L2, per image): a
machine whose Inception computes differently falls back to the full pass. `scripts/make_reference.py`
writes the file and prints the Frechet distance between the statistics of the stored features and
of a fresh full pass (what storing float16 costs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..seeding import reference_subset
from .inception import InceptionFeatures, inception_id

FOLDER = Path(__file__).parent / "references"
CHECK = 10  # reference images recomputed before the shipped features are trusted
TOLERANCE = 0.02  # largest relative L2 difference of a recomputed image's features (bf16 differs ~1e-3)


def path_for(dataset: str, resolution: int, split: str) -> Path:
    return FOLDER / f"{dataset}{resolution or ''}-{split}.npz"


def digest(images: torch.Tensor) -> str:
    """SHA-256 of uint8 images' bytes and shape: the reference images, exactly."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def meta_for(images: torch.Tensor, extractor: InceptionFeatures, weights: Path) -> dict:
    return {
        "images_sha256": digest(images),
        "num_images": len(images),
        "inception": inception_id(weights),
        "resize": extractor.resize,
        "precision": extractor.precision,
    }


def write(path: Path, images: torch.Tensor, extractor: InceptionFeatures, weights: Path) -> dict:
    """Compute and save the features of `images` (uint8, the reference subset in order)."""
    feats = extractor(images)
    meta = meta_for(images, extractor, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, features=feats.astype(np.float16), meta=np.array(json.dumps(meta)))
    return meta


def relative_error(recomputed: np.ndarray, shipped: np.ndarray) -> float:
    """Largest per-image ||recomputed - shipped|| / ||recomputed||."""
    num = np.linalg.norm(recomputed - shipped, axis=1)
    return float((num / np.maximum(np.linalg.norm(recomputed, axis=1), 1e-12)).max())


def load(
    path: Path, split_images: torch.Tensor, num: int, extractor: InceptionFeatures, weights: Path
) -> np.ndarray | None:
    """Float64 features of the first `num` images of the reference subset of `split_images` (a
    dataset's whole reference split), or None when there is no file, it was made from other images / another Inception / other
    settings, or this machine's Inception disagrees with it on the first `CHECK` images."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            feats, meta = f["features"], json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError):
        return None
    n = int(meta.get("num_images", 0))
    if not 2 <= num <= n or feats.shape != (n, 2048) or len(split_images) < n:
        return None
    images = split_images[reference_subset(len(split_images), n)]
    if meta != meta_for(images, extractor, weights):
        return None
    feats = feats[:num].astype(np.float64)
    k = min(CHECK, num)
    if relative_error(extractor(images[:k]), feats[:k]) > TOLERANCE:
        return None
    return feats
