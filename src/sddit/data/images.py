"""Small image datasets held in memory as uint8 tensors (Fashion-MNIST, scikit-learn's digits).

Why no DataLoader: Fashion-MNIST is 47 MB; indexing one tensor is faster than worker processes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_HINT = "install it with `apt-get update && apt-get install -y dataset-fashion-mnist` or set data.root"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: magic, dims, big-endian sizes, then raw bytes), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path} ({e}): re-download it ({FASHION_MNIST_HINT})") from None
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file (too short): re-download it ({FASHION_MNIST_HINT})")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, the file has {len(raw)}; "
                        f"re-download it ({FASHION_MNIST_HINT})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data, found {body.size}; "
                        f"re-download it ({FASHION_MNIST_HINT})")
    return body.reshape(shape)


@dataclass
class ImageDataset:
    """uint8 images (N, C, H, W) with int64 labels; `batch()` returns pixels in [-1, 1]."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def padded(self, size: int) -> "ImageDataset":
        """The images centred on a `size` x `size` canvas of the background value 0 (black), e.g.
        Fashion-MNIST at 32x32, so that patch 2 gives 256 tokens like ImageNet-256 latents."""
        h, w = self.images.shape[-2:]
        if size < max(h, w):
            raise DataError(f"data.resolution={size} is smaller than the images ({h}x{w}); use 0 or >= {max(h, w)}")
        top, left = (size - h) // 2, (size - w) // 2
        images = torch.nn.functional.pad(self.images, (left, size - w - left, top, size - h - top))
        return ImageDataset(images, self.labels, self.class_names)

    def batch(self, indices: torch.Tensor, hflip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels scaled to [-1, 1]; `hflip` is an optional bool mask of samples to mirror."""
        x = self.images[indices].float().div_(127.5).sub_(1.0)  # (B, C, H, W)
        if hflip is not None and bool(hflip.any()):
            x[hflip] = x[hflip].flip(-1)
        return x, self.labels[indices]


def load_fashion_mnist(root: str | Path, split: str = "train") -> ImageDataset:
    root = Path(root)
    if split not in FASHION_MNIST_FILES:
        raise DataError(f"unknown Fashion-MNIST split '{split}'; use train or test")
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    for name in (img_name, lbl_name):
        if not (root / name).exists():
            raise DataError(f"Fashion-MNIST file {root / name} not found: {FASHION_MNIST_HINT}")
    images = read_idx(root / img_name)  # (N, 28, 28)
    labels = read_idx(root / lbl_name)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES
    )


def load_digits(split: str = "train", test_fraction: float = 0.2) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, 17 grey levels) as a tiny dataset for tests."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8) in 0..255
    labels = bunch.target.astype(np.int64)
    n_test = int(len(images) * test_fraction)
    order = np.random.default_rng(0).permutation(len(images))  # fixed split
    idx = order[n_test:] if split == "train" else order[:n_test]
    return ImageDataset(
        torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx]), tuple(str(i) for i in range(10))
    )
