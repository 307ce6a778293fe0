"""Training objectives. Each turns a clean batch into a scalar loss plus named terms for the log.

All three share the backbone, the EDM preconditioning (`EDMPrecond`), the sampler and the training
loop; they differ only in what they ask of the network and how they score it:

- `DiTObjective`     the plain EDM loss on every pixel (Peebles & Xie's DiT under EDM).
- `MaskDiTObjective` 50% of tokens dropped before the encoder; EDM loss on visible patches plus
                     0.1 x an MAE loss on masked patches (Zheng et al.).
- `SDDiTObjective`   20% masking for the student; an EMA teacher encoder sees the same x0 and the
                     same noise at a small sigma (a pair on one PF-ODE trajectory); DINO/iBOT-style
                     cross-entropy between their projected tokens, plus the EDM loss on visible patches.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .diffusion import EDMPrecond, edm_loss, precond_coeffs, sample_sigma
from . import distributed as dist
from .distributed import all_reduce_mean
from .models.split import num_kept

Terms = dict[str, Tensor]


def unwrap(net: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(net, "module"):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, T, p*p*C), tokens in row-major order like the patch embedding."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def per_patch_mean(loss: Tensor, p: int) -> Tensor:
    """Average a per-element loss (B, C, H, W) within each patch -> (B, T)."""
    return F.avg_pool2d(loss.mean(dim=1, keepdim=True), p).flatten(1)


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Per-sample weighted mean over tokens, then the batch mean (MaskDiT normalises per sample)."""
    return ((values * weights).sum(1) / weights.sum(1).clamp_min(1)).mean()


@dataclass
class StepNoise:
    """This rank's share of one step's randomness (see `DiTObjective.draw`)."""

    sigma: Tensor  # (B,) noise levels, lognormal
    eps: Tensor  # (B, C, H, W) unit Gaussian noise
    drop: Tensor  # (B,) long, 1 = label replaced by the null class (CFG dropout)
    generator: torch.Generator  # for further draws of the same step (masks)
    rows: slice  # this rank's rows of the global batch


class DiTObjective:
    """L = E_{x0, sigma, eps} lambda(sigma) |D(x0 + sigma eps; sigma, y) - x0|^2 (SPEC section 2)."""

    name = "dit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        self.cfg = cfg
        self.dcfg = cfg.diffusion

    def draw(self, x0: Tensor, step: int) -> StepNoise:
        """All randomness of a step from a generator keyed on (seed, step), drawn for the GLOBAL batch.

        Rank r keeps rows [r*B, (r+1)*B). So N processes see exactly the noise, labels dropped and
        masks one process would see for the same global batch, and a resumed run draws exactly
        what the uninterrupted run drew.
        """
        B, world, rank = x0.shape[0], dist.world_size(), dist.rank()
        g = torch.Generator(x0.device).manual_seed(self.cfg.train.seed * 1_000_003 + step)
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

    def loss(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)
        x_noisy = x0 + n.sigma.view(-1, 1, 1, 1) * n.eps  # (B, C, H, W)
        denoised = net(x_noisy, n.sigma, y, force_drop_ids=n.drop)  # (B, C, H, W)
        loss = edm_loss(denoised.float(), x0, n.sigma.view(-1, 1, 1, 1), self.dcfg.sigma_data).mean()
        return loss, {"loss_gen": loss.detach()}

    def after_step(self, net: nn.Module, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class MaskDiTObjective(DiTObjective):
    """MaskDiT: EDM loss on visible patches + mae_loss_coef * MAE loss on masked ones.

    The MAE target is the noisy input x0 + sigma*eps, normalised per patch (mean 0, var 1), and the
    prediction is the denoiser output D at the masked positions (as in the MaskDiT code base).
    """

    name = "maskdit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__(cfg, net)
        self.mcfg = cfg.maskdit
        self.patch = unwrap(unwrap(net).model).patch_size  # the model's own (a preset may differ from model.patch_size)

    def num_tokens(self, x0: Tensor) -> int:
        return (x0.shape[-2] // self.patch) * (x0.shape[-1] // self.patch)

    def mask_ratio(self, step: int) -> float:
        finetune_from = self.cfg.train.max_steps - self.mcfg.unmask_finetune_steps
        return 0.0 if step >= finetune_from else self.mcfg.mask_ratio

    def loss(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)
        sigma = n.sigma
        x_noisy = x0 + sigma.view(-1, 1, 1, 1) * n.eps  # (B, C, H, W)
        ids_keep = self.draw_mask(n, self.num_tokens(x0), self.mask_ratio(step))  # (B, T_keep) or None
        out = net(x_noisy, sigma, y, return_tokens=True, ids_keep=ids_keep, force_drop_ids=n.drop)
        denoised = out["denoised"].float()  # (B, C, H, W)
        visible = 1.0 - out["mask"].float()  # (B, T), 1 = visible
        per_patch = per_patch_mean(edm_loss(denoised, x0, sigma.view(-1, 1, 1, 1), self.dcfg.sigma_data), self.patch)
        loss_gen = masked_mean(per_patch, visible)
        terms = {"loss_gen": loss_gen.detach()}
        loss = loss_gen
        if self.mcfg.mae_loss_coef > 0 and bool((visible < 1).any()):
            target = patchify(x_noisy, self.patch)  # (B, T, p*p*C)
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            mae = (patchify(denoised, self.patch) - target).pow(2).mean(-1)  # (B, T)
            loss_mae = masked_mean(mae, 1.0 - visible)
            loss = loss + self.mcfg.mae_loss_coef * loss_mae
            terms["loss_mae"] = loss_mae.detach()
        return loss, terms


# ----------------------------------------------------------------------------- SD-DiT


def cosine_schedule(step: int, total: int, start: float, end: float) -> float:
    """DINO's momentum schedule: start -> end along half a cosine over `total` steps."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """iBOT/DINO teacher temperature: linear warm-up start -> end, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


def self_distillation_ce(student_logits: Tensor, teacher_logits: Tensor, center: Tensor, tau_s: float, tau_t: float) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy H(p_T, p_S) per token, with p_T = softmax((t - C)/tau_T), p_S = softmax(s/tau_S).

    Returns (ce, teacher_entropy, kl) per token, all in float32 (softmax in bf16 is what makes
    DINO-style losses drift: SPEC section 6).
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        p_t = F.softmax((teacher_logits.float() - center) / tau_t, dim=-1).detach()  # (..., K)
        log_p_s = F.log_softmax(student_logits.float() / tau_s, dim=-1)  # (..., K)
        ce = -(p_t * log_p_s).sum(-1)  # (...)
        entropy = -(p_t * torch.log(p_t.clamp_min(1e-12))).sum(-1)  # (...)
        return ce, entropy, ce.detach() - entropy


class SDDiTObjective(DiTObjective):
    """SD-DiT (SPEC section 3): L = L_gen(visible patches) + lambda_D * (CE_cls + mean_i CE_patch_i)."""

    name = "sddit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__(cfg, net)
        self.scfg = cfg.sddit
        self.patch = unwrap(unwrap(net).model).patch_size
        student = unwrap(unwrap(net).model)
        if getattr(student, "head", None) is None:
            raise ValueError("objective=sddit needs a model with a projection head (model.head_dim > 0)")
        self.use_cls = bool(getattr(student, "use_cls_token", False))
        # The teacher: EMA of embedders, [CLS], encoder blocks and head. A plain attribute of this
        # object, not of the student module, so it is never inside DDP and never in the optimiser.
        self.teacher = student.make_teacher()
        K = cfg.model.head_dim
        device = next(student.parameters()).device
        self.center_cls = torch.zeros(1, K, device=device)
        self.center_patch = torch.zeros(1, 1, K, device=device)
        self._pending_centers: tuple[Tensor | None, Tensor] | None = None
        warm = self.scfg.teacher_temp_warmup_steps or int(0.3 * cfg.train.max_steps)
        self.temp_warmup_steps = warm

    # -- schedules
    def teacher_sigma(self, sigma_s: Tensor) -> Tensor:
        s = self.scfg
        if s.teacher_sigma == "min":
            return torch.full_like(sigma_s, self.dcfg.sigma_min)
        if s.teacher_sigma == "fixed":
            return torch.full_like(sigma_s, s.teacher_sigma_value)
        return sigma_s * s.teacher_sigma_fraction  # a fraction of the student's sigma

    def momentum(self, step: int) -> float:
        s = self.scfg
        if s.teacher_momentum_schedule == "fixed":
            return s.teacher_momentum
        return cosine_schedule(step, self.cfg.train.max_steps, s.teacher_momentum, s.teacher_momentum_final)

    def tau_t(self, step: int) -> float:
        return teacher_temperature(step, self.temp_warmup_steps, self.scfg.teacher_temp_warmup, self.scfg.teacher_temp)

    # -- the step
    @torch.no_grad()
    def teacher_logits(self, x_t: Tensor, sigma_t: Tensor, y: Tensor, drop: Tensor) -> Tensor:
        """Teacher head logits on [CLS] + all tokens of x_T = x0 + sigma_T eps, with EDM's input scaling."""
        _, _, c_in, c_noise = precond_coeffs(sigma_t.view(-1, 1, 1, 1), self.dcfg.sigma_data)
        enc = self.teacher.encode(c_in * x_t, c_noise.flatten(), y, force_drop_ids=drop)  # tokens (B, [1+]T, D)
        return self.teacher.head(enc["tokens"]).float()  # (B, [1+]T, K)

    def loss(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)  # the same eps for student and teacher: one PF-ODE trajectory
        sigma_s, eps, drop = n.sigma, n.eps, n.drop  # drop: the teacher sees the same (maybe null) label
        sigma_t = self.teacher_sigma(sigma_s)
        x_s = x0 + sigma_s.view(-1, 1, 1, 1) * eps  # (B, C, H, W)
        x_t = x0 + sigma_t.view(-1, 1, 1, 1) * eps  # (B, C, H, W)

        num_tokens = (x0.shape[-2] // self.patch) * (x0.shape[-1] // self.patch)
        ids_keep = self.draw_mask(n, num_tokens, self.scfg.mask_ratio)  # (B, T_keep) or None
        out = net(x_s, sigma_s, y, return_tokens=True, ids_keep=ids_keep, force_drop_ids=drop)
        visible = 1.0 - out["mask"].float()  # (B, T)
        per_patch = per_patch_mean(edm_loss(out["denoised"].float(), x0, sigma_s.view(-1, 1, 1, 1), self.dcfg.sigma_data), self.patch)
        loss_gen = masked_mean(per_patch, visible)

        t_logits = self.teacher_logits(x_t, sigma_t, y, drop)  # (B, [1+]T, K)
        s_logits = out["head"]  # (B, [1+]T_keep, K)
        n_cls = 1 if self.use_cls else 0
        t_patch_all = t_logits[:, n_cls:]  # (B, T, K)
        ids_keep = out["ids_keep"]  # (B, T_keep)
        t_patch = torch.gather(t_patch_all, 1, ids_keep.unsqueeze(-1).expand(-1, -1, t_patch_all.shape[-1]))  # (B, T_keep, K)
        tau_t = self.tau_t(step)
        ce_p, ent_p, kl_p = self_distillation_ce(s_logits[:, n_cls:], t_patch, self.center_patch, self.scfg.student_temp, tau_t)
        loss_patch = ce_p.mean()
        terms: Terms = {"loss_gen": loss_gen.detach(), "loss_patch": loss_patch.detach()}
        entropy, kl = ent_p.mean(), kl_p.mean()
        loss_d = loss_patch
        if self.use_cls:
            ce_c, ent_c, kl_c = self_distillation_ce(s_logits[:, 0], t_logits[:, 0], self.center_cls, self.scfg.student_temp, tau_t)
            loss_cls = ce_c.mean()
            loss_d = loss_d + loss_cls
            terms["loss_cls"] = loss_cls.detach()
            entropy, kl = (entropy + ent_c.mean()) / 2, (kl + kl_c.mean()) / 2
        terms.update(loss_disc=loss_d.detach(), teacher_entropy=entropy.detach(), kl_teacher_student=kl.detach(), tau_t=torch.tensor(tau_t))
        # The centers move after the loss used the old ones [ibot], and only once the step is taken
        # (after_step), so a skipped non-finite step cannot poison them.
        self._pending_centers = self._batch_centers(t_logits, n_cls)
        return loss_gen + self.scfg.lambda_d * loss_d, terms

    @torch.no_grad()
    def _batch_centers(self, t_logits: Tensor, n_cls: int) -> tuple[Tensor | None, Tensor]:
        """All-reduced batch means of the raw teacher logits: ([CLS] (1, K) or None, patches (1, 1, K))."""
        batch_cls = all_reduce_mean(t_logits[:, 0].mean(0, keepdim=True)) if n_cls else None  # (1, K)
        batch_patch = all_reduce_mean(t_logits[:, n_cls:].mean((0, 1)).view(1, 1, -1))  # (1, 1, K)
        return batch_cls, batch_patch

    @torch.no_grad()
    def _update_centers(self, batch_cls: Tensor | None, batch_patch: Tensor) -> None:
        m = self.scfg.center_momentum
        if batch_cls is not None:
            self.center_cls.mul_(m).add_(batch_cls, alpha=1 - m)
        self.center_patch.mul_(m).add_(batch_patch, alpha=1 - m)

    @torch.no_grad()
    def after_step(self, net: nn.Module, step: int) -> None:
        """Centers <- the pending batch means; teacher <- m * teacher + (1 - m) * student, by name."""
        if self._pending_centers is not None:
            self._update_centers(*self._pending_centers)
            self._pending_centers = None
        m = self.momentum(step)
        student = dict(unwrap(unwrap(net).model).named_parameters())
        for name, p_t in self.teacher.named_parameters():
            p_t.lerp_(student[name].detach().to(p_t.dtype), 1.0 - m)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "center_cls": self.center_cls, "center_patch": self.center_patch}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.center_cls.copy_(state["center_cls"])
        self.center_patch.copy_(state["center_patch"])


OBJECTIVES = {"dit": DiTObjective, "maskdit": MaskDiTObjective, "sddit": SDDiTObjective}


def build_objective(cfg: Config, net: EDMPrecond) -> DiTObjective:
    return OBJECTIVES[cfg.objective](cfg, net)


def copy_for_ema(net: nn.Module) -> nn.Module:
    """A frozen deep copy for the sampling EMA."""
    return copy.deepcopy(unwrap(net)).eval().requires_grad_(False)
