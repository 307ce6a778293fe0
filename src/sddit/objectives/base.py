"""What every objective shares: one step's randomness, drawn for the global batch, and the masked
averages of the losses. An objective is an `nn.Module` whose forward is the loss (EDM's
`training/loss.py` style): `loss, terms = objective(net, x0, y, step)`. Its state (SD-DiT's teacher
and centers) is ordinary module state, saved by `state_dict()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import distributed as dist
from ..config import Config
from ..diffusion import EDMPrecond, sample_sigma
from ..models.tokens import num_kept
from ..runtime import unwrap
from ..seeding import step_generator

Terms = dict[str, Tensor]


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-sample weighted mean over tokens, then the batch mean (MaskDiT normalises per sample)."""
    return ((values * weights).sum(1) / weights.sum(1).clamp_min(1)).mean()


@dataclass
class StepNoise:
    """This rank's share of one step's randomness (see `Objective.draw`)."""

    sigma: Tensor  # (B,) noise levels, lognormal
    eps: Tensor  # (B, C, H, W) unit Gaussian noise
    drop: Tensor  # (B,) long, 1 = label replaced by the null class (CFG dropout)
    generator: torch.Generator  # for further draws of the same step (masks)
    rows: slice  # this rank's rows of the global batch


class Objective(nn.Module):
    """Base: the step's noise and masks. Subclasses define `forward` (the loss) and may override
    `after_step` (work after the optimiser step, e.g. the teacher's EMA)."""

    name = "base"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__()
        self.cfg = cfg
        self.dcfg = cfg.diffusion
        self.patch = unwrap(unwrap(net).model).patch_size  # the model's own (a preset may differ from model.patch_size)
        self.parts: dict[str, Tensor] = {}

    def draw(self, x0: Tensor, step: int) -> StepNoise:
        """All randomness of a step from `seeding.step_generator(seed, step)`, drawn for the GLOBAL batch.

        Rank r keeps rows [r*B, (r+1)*B). So N processes see exactly the noise, labels dropped and
        masks one process would see for the same global batch, and a resumed run draws exactly
        what the uninterrupted run drew.
        """
        B, world, rank = x0.shape[0], dist.world_size(), dist.rank()
        g = step_generator(self.cfg.train.seed, step, x0.device)
        rows = slice(rank * B, (rank + 1) * B)
        sigma = sample_sigma(B * world, self.dcfg.P_mean, self.dcfg.P_std, device=x0.device, generator=g)[rows]  # (B,)
        eps = torch.randn((B * world, *x0.shape[1:]), device=x0.device, generator=g)[rows]  # (B, C, H, W)
        drop = torch.rand(B * world, device=x0.device, generator=g)[rows] < self.cfg.model.class_dropout_prob
        return StepNoise(sigma, eps, drop.long(), g, rows)

    def draw_mask(self, noise: StepNoise, num_tokens: int, ratio: float) -> Tensor | None:
        """ids_keep (B, T_keep) of a per-sample uniform random mask, or None at ratio 0."""
        if ratio == 0:
            return None
        world = dist.world_size()
        B = noise.sigma.shape[0]
        scores = torch.rand(B * world, num_tokens, device=noise.eps.device, generator=noise.generator)[noise.rows]
        return scores.argsort(dim=1)[:, : num_kept(num_tokens, ratio)]  # (B, T_keep)

    def num_tokens(self, x0: Tensor) -> int:
        return (x0.shape[-2] // self.patch) * (x0.shape[-1] // self.patch)

    def forward(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        """(loss, detached terms for the log). Also sets `self.parts`: the weighted loss terms that sum
        to the loss, with their graphs, for per-term gradient norms (train.gradnorm_every)."""
        raise NotImplementedError

    def adjust_gradients(self, net: nn.Module, step: int) -> None:
        """Called after backward, before gradient clipping and the optimiser step."""

    def after_step(self, net: nn.Module, step: int) -> None:
        """Called after each optimiser step that was taken (not after skipped non-finite steps)."""
