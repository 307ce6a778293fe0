"""Training data: small pixel datasets in memory (`images.py`), SD-VAE latents written by `sddit
prepare` (`latents.py`, `latent_format.py`, `prepare.py`), and the resumable sampler (`sampler.py`)."""

from __future__ import annotations

from ..errors import DataError
from .images import ImageDataset, load_digits, load_fashion_mnist
from .latents import LatentDataset
from .sampler import EpochSampler


def build_dataset(name: str, root: str, split: str = "train", resolution: int = 0):
    """fashion_mnist / digits (pixels in memory, padded to `resolution` if set) or latents (a folder
    written by `sddit prepare`)."""
    if name in ("fashion_mnist", "digits"):
        ds = load_fashion_mnist(root, split) if name == "fashion_mnist" else load_digits(split)
        return ds.padded(resolution) if resolution else ds
    if name == "latents":
        return LatentDataset(root)
    raise DataError(f"unknown dataset '{name}'; use fashion_mnist, digits or latents")

__all__ = ["DataError", "ImageDataset", "LatentDataset", "EpochSampler", "build_dataset", "load_digits", "load_fashion_mnist"]
