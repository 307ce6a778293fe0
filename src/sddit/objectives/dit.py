"""DiT under EDM (Peebles & Xie 2023; Karras et al. 2022): the plain denoising loss on every pixel."""

from __future__ import annotations

from torch import Tensor, nn

from ..diffusion import edm_loss
from .base import Objective, Terms


class DiTObjective(Objective):
    """L = E_{x0, sigma, eps} lambda(sigma) |D(x0 + sigma eps; sigma, y) - x0|^2 (SPEC section 2)."""

    name = "dit"

    def forward(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)
        x_noisy = x0 + n.sigma.view(-1, 1, 1, 1) * n.eps  # (B, C, H, W)
        denoised = net(x_noisy, n.sigma, y, force_drop_ids=n.drop)  # (B, C, H, W)
        loss = edm_loss(denoised.float(), x0, n.sigma.view(-1, 1, 1, 1), self.dcfg.sigma_data).mean()
        self.parts = {"gen": loss}
        return loss, {"loss_gen": loss.detach()}
