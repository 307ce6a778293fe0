"""Training data from `sddit prepare` output: SD-VAE posterior moments, re-sampled at every batch.

Each entry stores the posterior mean and log-variance (float16, (2C, h, w)). `batch()` draws
`z = (mean + exp(logvar / 2) * eps) * scale_factor` with fresh `eps` on every call, so every training
step sees a new posterior sample of every image (SPEC section 8: never freeze one sample).
Horizontal flips are separate entries, encoded from the mirrored image by `prepare` (a mirrored
latent is not the latent of the mirrored image), so `batch()` does not flip.

Memory: the shards are memory-mapped, never loaded (`latent_format.stored_npy_members`). A batch
copies out only its own rows, and the pages it touched are then dropped from this process's
mapping (they stay in the kernel's page cache, shared by every rank on the node). So a process's
resident memory is one batch plus the shard index, whatever the dataset size: ImageNet-256 with
flips (2.56M entries, ~42 GB of moments) no longer sits in every rank's memory. Each rank reads
only the rows of its own share of each global batch. Measured in README ("Real datasets and
clusters") with `benchmarks/latent_memory.py`. One trade-off: rows are read in place, so the zip
CRCs of the shards are not checked on read (`sddit prepare` writes shards atomically and fsyncs).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .latent_format import MANIFEST, read_manifest, stored_npy_members


@dataclass
class _Shard:
    """One memory-mapped shard: byte views of its rows into the mapping, nothing read yet.

    The arrays start at arbitrary (usually odd) offsets inside the .npz, so typed views would be
    unaligned, and numpy copies a whole unaligned array before `take`-ing rows from it. Rows are
    therefore viewed as bytes (always aligned), copied out, and given their dtype afterwards.
    """

    path: Path
    map: mmap.mmap
    moments: np.ndarray  # (n, 2C*h*w*2) uint8 view of the file: float16 moments as bytes
    labels: np.ndarray  # (n, 8) uint8 view of the file: int64 labels as bytes

    def release(self) -> None:
        """Drop the pages this process touched from its mapping (they stay in the page cache)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED)


def _open_shard(path: Path, n: int, moment_shape: tuple[int, int, int], rank_hint: str) -> _Shard:
    if not path.exists():
        raise DataError(f"shard {path} listed in {MANIFEST} is missing: re-run `sddit prepare` for rank {rank_hint}")
    layout = stored_npy_members(path, ("moments", "labels"))
    mo, la = layout["moments"], layout["labels"]
    if mo.shape != (n, *moment_shape) or la.shape != (n,) or mo.dtype != np.float16 or la.dtype != np.int64:
        raise DataError(f"shard {path} holds {mo.dtype} {mo.shape} moments / {la.dtype} {la.shape} labels, expected {n} "
                        f"entries of {moment_shape}: re-run `sddit prepare` for rank {rank_hint}")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own handle on the file
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)  # rows are read in random order: no read-ahead of other rows
    moments = np.frombuffer(mapped, np.uint8, mo.nbytes, mo.offset).reshape(n, mo.nbytes // max(n, 1))
    labels = np.frombuffer(mapped, np.uint8, la.nbytes, la.offset).reshape(n, 8)
    return _Shard(path, mapped, moments, labels)


class LatentDataset:
    """The shards of a prepared directory, memory-mapped; `batch()` samples latents from the moments."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.manifest = m = read_manifest(self.root)
        c, h, w = (int(v) for v in m["latent_shape"])
        self._moment_shape = (2 * c, h, w)
        self.class_names: tuple[str, ...] = tuple(m["class_names"])
        self.scale_factor = float(m["scale_factor"])
        self._shards = [_open_shard(self.root / sh["file"], int(sh["entries"]), self._moment_shape, sh.get("rank", "?"))
                        for sh in m["shards"]]
        sizes = [len(s.labels) for s in self._shards]
        self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # entry i lies in shard searchsorted(...)
        total = int(self._starts[-1])
        if total != int(m["counts"]["entries"]):
            raise DataError(f"{self.root}: shards hold {total} entries, manifest says {m['counts']['entries']}")
        if total == 0:
            raise DataError(f"{self.root} holds no latents (every image was skipped?)")
        for s in self._shards:  # one pass over the labels (8 bytes per entry), then their pages are dropped
            labels = s.labels.copy().view(np.int64).reshape(-1)
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
                raise DataError(f"{s.path}: labels outside the {len(self.class_names)} classes of the manifest")
            s.release()

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Latent (C, h, w), e.g. (4, 32, 32) for 256px and an SD VAE."""
        c2, h, w = self._moment_shape
        return (c2 // 2, h, w)

    def read(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(moments float16 (B, 2C, h, w), labels int64 (B,)) of `indices`, read from the mapped shards.

        Only the rows asked for are read; afterwards the touched pages are dropped from this
        process's mapping, so resident memory stays one batch however many batches are read.
        """
        idx = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} latents")
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        row_bytes = int(np.prod(self._moment_shape)) * 2
        moments = np.empty((idx.size, row_bytes), np.uint8)  # the batch's rows as bytes, in shard order
        labels = np.empty((idx.size, 8), np.uint8)
        order = np.argsort(shard_of, kind="stable")  # rows grouped by shard: each shard fills one block
        local = idx[order] - self._starts[shard_of[order]]  # row within its shard
        bounds = np.searchsorted(shard_of[order], np.arange(len(self._shards) + 1))
        for k in np.nonzero(np.diff(bounds))[0]:
            a, b = bounds[k], bounds[k + 1]
            shard = self._shards[k]
            # reads only these rows, straight into the batch (indices checked above, so mode="clip" never clips)
            np.take(shard.moments, local[a:b], axis=0, out=moments[a:b], mode="clip")
            np.take(shard.labels, local[a:b], axis=0, out=labels[a:b], mode="clip")
            shard.release()
        restore = np.empty_like(order)
        restore[order] = np.arange(idx.size)
        moments = moments[restore].view(np.float16).reshape(idx.size, *self._moment_shape)  # (B, 2C, h, w)
        return torch.from_numpy(moments), torch.from_numpy(labels[restore].view(np.int64).reshape(-1))

    def batch(self, indices: torch.Tensor, hflip: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, y): a fresh posterior sample `(mean + exp(logvar/2) * eps) * scale_factor` (float32) and labels.

        `eps` comes from `generator`, by default this rank's global torch generator, whose state every
        checkpoint saves (docs/randomness.md). `hflip` must be None or all False: the mirrored images
        are already entries of the dataset (set data.hflip false for latent data); a DataError is
        raised otherwise rather than silently flipping latents.
        """
        if hflip is not None and bool(torch.as_tensor(hflip).any()):
            raise DataError("latent datasets store horizontal flips as separate entries (encoded from the mirrored "
                            "image); set data.hflip: false")
        moments, labels = self.read(indices)
        mean, logvar = moments.float().chunk(2, dim=1)  # 2 x (B, C, h, w)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps) * self.scale_factor
        return z, labels

    def mean_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """Posterior means times the scale factor (deterministic; for inspection, not training)."""
        return self.read(indices)[0].float().chunk(2, dim=1)[0] * self.scale_factor
