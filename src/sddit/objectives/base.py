"""What every objective shares: one step's randomness, drawn for the global batch, and the masked
averages of the losses. An objective is an `nn.Module` whose forward is the loss (EDM's
`training/loss.py` style): `loss, terms = objective(net, x0, y, step)`. Its state (SD-DiT's teacher
and centers) is ordinary module state, saved by `state_dict()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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

    micro: tuple[int, int] = (0, 1)  # (index, count) of the micro-batch forward() computes (train.grad_accum)

    @contextmanager
    def micro_batch(self, index: int, count: int) -> Iterator[None]:
        """Within it, forward() computes micro-batch `index` of `count` equal parts of this rank's
        rows (train.grad_accum), and `draw` hands it exactly those rows of the step's global draw."""
        self.micro = (index, count)
        try:
            yield
        finally:
            self.micro = (0, 1)

    def global_rows(self, b: int) -> tuple[int, slice]:
        """(global batch size, this forward's rows of it) for a batch of `b` rows: rank r, micro-batch
        m of k owns rows [(r*k + m)*b, (r*k + m + 1)*b), so ranks and micro-batches tile the global batch."""
        m, k = self.micro
        start = (dist.rank() * k + m) * b
        return b * k * dist.world_size(), slice(start, start + b)

    def draw(self, x0: Tensor, step: int) -> StepNoise:
        """All randomness of a step from `seeding.step_generator(seed, step)`, drawn for the GLOBAL batch.

        Rank r keeps rows [r*B, (r+1)*B) (with micro-batches: `global_rows`). So N processes, or k
        accumulated micro-batches, see exactly the noise, labels dropped and masks one process would
        see for the same global batch, and a resumed run draws exactly what the uninterrupted run drew.
        """
        total, rows = self.global_rows(x0.shape[0])
        g = step_generator(self.cfg.train.seed, step, x0.device)
        sigma = sample_sigma(total, self.dcfg.P_mean, self.dcfg.P_std, device=x0.device, generator=g)[rows]  # (B,)
        eps = torch.randn((total, *x0.shape[1:]), device=x0.device, generator=g)[rows]  # (B, C, H, W)
        drop = torch.rand(total, device=x0.device, generator=g)[rows] < self.cfg.model.class_dropout_prob
        return StepNoise(sigma, eps, drop.long(), g, rows)

    def draw_mask(self, noise: StepNoise, num_tokens: int, ratio: float) -> Tensor | None:
        """ids_keep (B, T_keep) of a per-sample uniform random mask, or None at ratio 0."""
        if ratio == 0:
            return None
        total, _ = self.global_rows(noise.sigma.shape[0])
        scores = torch.rand(total, num_tokens, device=noise.eps.device, generator=noise.generator)[noise.rows]
        return scores.argsort(dim=1)[:, : num_kept(num_tokens, ratio)]  # (B, T_keep)

    def micro_mean(
        self, running: tuple[Tensor | None, ...] | None, batch: tuple[Tensor | None, ...]
    ) -> tuple[Tensor | None, ...]:
        """Mean over a step's micro-batches of per-micro-batch means (e.g. SD-DiT's batch centers):
        restarts at micro-batch 0 and adds batch / k, so equal micro-batches give the step's batch mean."""
        m, k = self.micro
        if k == 1:
            return batch
        part = tuple(None if b is None else b / k for b in batch)
        if m == 0 or running is None:
            return part
        return tuple(None if r is None else r + p for r, p in zip(running, part))

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

    def warnings(self, step: int, record: dict) -> list[str]:
        """One-line warnings about the run's health from each logged window's `record` (e.g. SD-DiT's
        terms that stay uniform); the trainer prints them."""
        return []
