"""MaskDiT (Zheng et al. 2023): tokens dropped before the encoder, EDM loss on the visible patches
plus an MAE loss on the masked ones."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import Config
from ..diffusion import EDMPrecond, edm_loss
from ..models.tokens import patchify, per_patch_mean
from .base import Objective, Terms, masked_mean


class MaskDiTObjective(Objective):
    """EDM loss on visible patches + mae_loss_coef * MAE loss on masked ones.

    The MAE target is the noisy input x0 + sigma*eps, normalised per patch (mean 0, var 1), and the
    prediction is the denoiser output D at the masked positions (as in the MaskDiT code base).
    """

    name = "maskdit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__(cfg, net)
        self.mcfg = cfg.maskdit

    def mask_ratio(self, step: int) -> float:
        """The configured ratio, or 0 during the last `unmask_finetune_steps` (MaskDiT's unmasked fine-tune)."""
        finetune_from = self.cfg.train.max_steps - self.mcfg.unmask_finetune_steps
        return 0.0 if step >= finetune_from else self.mcfg.mask_ratio

    def forward(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)
        sigma = n.sigma
        x_noisy = x0 + sigma.view(-1, 1, 1, 1) * n.eps  # (B, C, H, W)
        ids_keep = self.draw_mask(n, self.num_tokens(x0), self.mask_ratio(step))  # (B, T_keep) or None
        out = net(x_noisy, sigma, y, return_tokens=True, ids_keep=ids_keep, force_drop_ids=n.drop)
        denoised = out.denoised.float()  # (B, C, H, W)
        visible = 1.0 - out.mask.float()  # (B, T), 1 = visible
        per_patch = per_patch_mean(edm_loss(denoised, x0, sigma.view(-1, 1, 1, 1), self.dcfg.sigma_data), self.patch)
        loss_gen = masked_mean(per_patch, visible)
        terms = {"loss_gen": loss_gen.detach()}
        self.parts = {"gen": loss_gen}
        loss = loss_gen
        if self.mcfg.mae_loss_coef > 0 and bool((visible < 1).any()):
            target = patchify(x_noisy, self.patch)  # (B, T, p*p*C)
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            mae = (patchify(denoised, self.patch) - target).pow(2).mean(-1)  # (B, T)
            loss_mae = masked_mean(mae, 1.0 - visible)
            loss = loss + self.mcfg.mae_loss_coef * loss_mae
            terms["loss_mae"] = loss_mae.detach()
            self.parts["mae"] = self.mcfg.mae_loss_coef * loss_mae
        return loss, terms
