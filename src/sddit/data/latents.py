"""Training data from `sddit prepare` output: SD-VAE posterior moments, re-sampled at every batch.

Each entry stores the posterior mean and log-variance (float16, (2C, h, w)). `batch()` draws
`z = (mean + exp(logvar / 2) * eps) * scale_factor` with fresh `eps` on every call, so every training
step sees a new posterior sample of every image (SPEC section 8: never freeze one sample).
Horizontal flips are separate entries, encoded from the mirrored image by `prepare` (a mirrored
latent is not the latent of the mirrored image), so `batch()` does not flip.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .latent_format import MANIFEST, read_manifest

class LatentDataset:
    """All shards of a prepared directory in memory; `batch()` samples latents from the moments.

    Memory: the moments are concatenated into one float16 tensor of N * 2C * h * w * 2 bytes, e.g.
    ImageNet-256 with flips (2.56M entries of 8x32x32) is about 42 GB, held by every process that
    builds the dataset (one per GPU under DDP). Fine for subsets and big hosts; full-ImageNet DDP
    on a small host would want memory-mapped per-rank loading instead.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.manifest = m = read_manifest(self.root)
        c, h, w = (int(v) for v in m["latent_shape"])
        moments, labels, flips = [], [], []
        for sh in m["shards"]:
            path = self.root / sh["file"]
            if not path.exists():
                raise DataError(f"shard {path} listed in {MANIFEST} is missing: re-run `sddit prepare` for rank "
                                f"{sh.get('rank', '?')}")
            try:
                with np.load(path, allow_pickle=False) as z:
                    mo, la, fl = z["moments"], z["labels"], z["flips"]
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                raise DataError(f"shard {path} is truncated or corrupt ({type(e).__name__}): delete it and re-run "
                                f"`sddit prepare` for rank {sh.get('rank', '?')}") from None
            n = int(sh["entries"])
            if mo.shape != (n, 2 * c, h, w) or la.shape != (n,) or fl.shape != (n,):
                raise DataError(f"shard {path} holds {mo.shape} moments / {la.shape} labels, expected {n} entries of "
                                f"{(2 * c, h, w)}: re-run `sddit prepare` for rank {sh.get('rank', '?')}")
            moments.append(mo)
            labels.append(la)
            flips.append(fl)
        total = sum(len(a) for a in labels)
        if total != int(m["counts"]["entries"]):
            raise DataError(f"{self.root}: shards hold {total} entries, manifest says {m['counts']['entries']}")
        if total == 0:
            raise DataError(f"{self.root} holds no latents (every image was skipped?)")
        self.moments = torch.from_numpy(np.concatenate(moments).astype(np.float16, copy=False))  # (N, 2C, h, w)
        self.labels = torch.from_numpy(np.concatenate(labels).astype(np.int64, copy=False))
        self.flips = torch.from_numpy(np.concatenate(flips).astype(bool, copy=False))
        self.class_names: tuple[str, ...] = tuple(m["class_names"])
        self.scale_factor = float(m["scale_factor"])
        if int(self.labels.max()) >= len(self.class_names) or int(self.labels.min()) < 0:
            raise DataError(f"{self.root}: labels outside the {len(self.class_names)} classes of the manifest")

    def __len__(self) -> int:
        return self.moments.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Latent (C, h, w), e.g. (4, 32, 32) for 256px and an SD VAE."""
        c2, h, w = self.moments.shape[1:]
        return (c2 // 2, h, w)

    def batch(self, indices: torch.Tensor, hflip: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, y): a fresh posterior sample `(mean + exp(logvar/2) * eps) * scale_factor` (float32) and labels.

        `hflip` must be None or all False: the mirrored images are already entries of the dataset
        (set data.hflip false for latent data); a DataError is raised otherwise rather than silently
        flipping latents.
        """
        if hflip is not None and bool(torch.as_tensor(hflip).any()):
            raise DataError("latent datasets store horizontal flips as separate entries (encoded from the mirrored "
                            "image); set data.hflip: false")
        m = self.moments[indices].float()
        mean, logvar = m.chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        z = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps) * self.scale_factor
        return z, self.labels[indices]

    def mean_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """Posterior means times the scale factor (deterministic; for inspection, not training)."""
        return self.moments[indices].float().chunk(2, dim=1)[0] * self.scale_factor
