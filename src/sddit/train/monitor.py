"""What a run shows of itself while and after it trains (rank 0): class grids of the sampling EMA
(`train.sample_every`) and its FID (`train.fid_every`, `train.fid_ref`), decoded through the VAE for
latent runs.

Everything a grid or an FID will need (the VAE, the Inception weights, the FID reference) is found
and loaded when the run starts, so a missing piece stops the run before training, with the fix,
instead of after hours of it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..eval import evaluate_generator, find_inception_weights
from ..eval.generator import check_reference
from ..sampling import class_grid, decoder_for_config, grid_classes


class Monitor:
    """Grids and FID of a network for one run; `grids` / `fid` say which will be asked for."""

    def __init__(self, cfg: Config, device: torch.device, grids: bool, fid: bool):
        self.cfg, self.device = cfg, device
        if fid:
            find_inception_weights(cfg.eval.inception or None)  # one-line DataError naming `pip install 'sddit[fid]'`
            check_reference(cfg)
        self.decode = decoder_for_config(cfg, device) if grids or fid else None  # None for pixel runs

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        m = self.cfg.model
        return (m.in_channels, m.input_size, m.input_size)

    def grid(self, net: nn.Module, path: str | Path, per_class: int) -> Path:
        """A class grid of `net` (rows: `train.sample_classes` classes spread over the labels) at
        eval.grid_steps / eval.grid_cfg_scale, seeds 0, 1, ... so grids of a run are comparable."""
        cfg = self.cfg
        classes = grid_classes(cfg.model.num_classes, cfg.train.sample_classes)
        return class_grid(net, cfg.model.num_classes, per_class, self.sample_shape, path, classes=classes,
                          num_steps=cfg.eval.grid_steps, cfg_scale=cfg.eval.grid_cfg_scale, device=self.device,
                          precision=cfg.eval.precision, decode=self.decode)

    def fid(self, net: nn.Module, num_samples: int) -> dict:
        """FID-N of `net` against `train.fid_ref` (or the dataset's reference split)."""
        return evaluate_generator(net, self.cfg, num_samples, self.device, decode=self.decode)
