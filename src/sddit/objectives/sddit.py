"""SD-DiT (Zhu et al., CVPR 2024): a DiT trained as a student whose encoder is aligned, DINO/iBOT
style, with an EMA teacher that sees the same image and noise at a lower noise level, plus the
ordinary EDM loss on the student's visible patches (SPEC section 3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..diffusion import EDMPrecond, edm_loss, precond_coeffs
from ..distributed import all_reduce_mean
from ..models.tokens import gather_tokens, per_patch_mean
from ..runtime import unwrap
from .base import Objective, Terms, masked_mean


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


def self_distillation_ce(student_logits: Tensor, teacher_logits: Tensor, center: Tensor, tau_s: float | Tensor,
                         tau_t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy H(p_T, p_S) per token, with p_T = softmax((t - C)/tau_T), p_S = softmax(s/tau_S).

    Returns (ce, teacher_entropy, kl) per token, all in float32 (softmax in bf16 is what makes
    DINO-style losses drift: SPEC section 6).
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        # log p_T first and p_T = exp(log p_T): the entropy then needs no clamp and log of p_T
        # (two more passes over B x T x K)
        log_p_t = F.log_softmax((teacher_logits.float() - center) / tau_t, dim=-1).detach()  # (..., K)
        p_t = log_p_t.exp()  # (..., K)
        log_p_s = F.log_softmax(student_logits.float() / tau_s, dim=-1)  # (..., K)
        ce = -(p_t * log_p_s).sum(-1)  # (...)
        entropy = -(p_t * log_p_t).sum(-1)  # (...)
        return ce, entropy, ce.detach() - entropy


class SDDiTObjective(Objective):
    """L = L_gen(visible patches) + lambda_D * (CE_cls + mean_i CE_patch_i).

    Holds the teacher (EMA of the student's embedders, [CLS], encoder blocks and head) as a
    submodule and the two centers as buffers, so `state_dict()` saves them; the teacher is never
    inside DDP and never in the optimiser.
    """

    name = "sddit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__(cfg, net)
        self.scfg = cfg.sddit
        student = unwrap(unwrap(net).model)
        if getattr(student, "head", None) is None:
            raise ValueError("objective=sddit needs a model with a projection head (model.head_dim > 0)")
        self.use_cls = bool(getattr(student, "use_cls_token", False))
        self.teacher = student.make_teacher()
        K = cfg.model.head_dim
        device = next(student.parameters()).device
        self.register_buffer("center_cls", torch.zeros(1, K, device=device))  # [CLS] logits' center
        self.register_buffer("center_patch", torch.zeros(1, 1, K, device=device))  # patch logits' center
        self._pending_centers: tuple[Tensor | None, Tensor] | None = None
        self.temp_warmup_steps = self.scfg.teacher_temp_warmup_steps or int(0.3 * cfg.train.max_steps)
        # With train.compile the cross-entropies are compiled too: eager, each of their ~12 element-wise
        # passes over B x T x K floats is a kernel of its own
        self._compiled_ce = torch.compile(self_distillation_ce, dynamic=False) if cfg.train.compile else None

    def ce(self, student_logits: Tensor, teacher_logits: Tensor, center: Tensor, tau_s: float,
           tau_t: float) -> tuple[Tensor, Tensor, Tensor]:
        """`self_distillation_ce`, compiled when train.compile is on."""
        if self._compiled_ce is None:
            return self_distillation_ce(student_logits, teacher_logits, center, tau_s, tau_t)
        # temperatures as 0-d tensors: a float is baked into the graph, so the warming-up tau_T would
        # recompile it every step
        dev = student_logits.device
        return self._compiled_ce(student_logits, teacher_logits, center, torch.tensor(tau_s, device=dev),
                                 torch.tensor(tau_t, device=dev))

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

    def tau_t_cls(self, step: int) -> float:
        """The [CLS] teacher temperature: fixed when `teacher_temp_cls` is set (iBOT keeps 0.04), else the patches'."""
        return self.scfg.teacher_temp_cls or self.tau_t(step)

    # -- the step
    @torch.no_grad()
    def teacher_logits(self, x_t: Tensor, sigma_t: Tensor, y: Tensor, drop: Tensor) -> Tensor:
        """Teacher head logits on [CLS] + all tokens of x_T = x0 + sigma_T eps, with EDM's input scaling.

        The teacher encoder stops at the block its head reads. Its conditioning c_noise comes from
        max(sigma_T, teacher_cond_sigma_min): sigma_min itself lies ~4 sd below the student's
        training noise levels, where the timestep embedding was never trained.
        """
        _, _, c_in, _ = precond_coeffs(sigma_t.view(-1, 1, 1, 1), self.dcfg.sigma_data)
        sigma_cond = sigma_t.clamp_min(self.scfg.teacher_cond_sigma_min) if self.scfg.teacher_cond_sigma_min > 0 else sigma_t
        _, _, _, c_noise = precond_coeffs(sigma_cond.view(-1, 1, 1, 1), self.dcfg.sigma_data)
        enc = self.teacher.encode(c_in * x_t, c_noise.flatten(), y, force_drop_ids=drop, stop_after_head_block=True)
        return self.teacher.head(enc.head_tokens).float()  # (B, [1+]T, K)

    def forward(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)  # the same eps for student and teacher: one PF-ODE trajectory
        sigma_s, eps, drop = n.sigma, n.eps, n.drop  # drop: the teacher sees the same (maybe null) label
        sigma_t = self.teacher_sigma(sigma_s)
        x_s = x0 + sigma_s.view(-1, 1, 1, 1) * eps  # (B, C, H, W)
        x_t = x0 + sigma_t.view(-1, 1, 1, 1) * eps  # (B, C, H, W)

        ids_keep = self.draw_mask(n, self.num_tokens(x0), self.scfg.mask_ratio)  # (B, T_keep) or None
        out = net(x_s, sigma_s, y, return_tokens=True, ids_keep=ids_keep, force_drop_ids=drop)
        visible = 1.0 - out.mask.float()  # (B, T)
        per_patch = per_patch_mean(edm_loss(out.denoised.float(), x0, sigma_s.view(-1, 1, 1, 1), self.dcfg.sigma_data),
                                   self.patch)
        loss_gen = masked_mean(per_patch, visible)

        t_logits = self.teacher_logits(x_t, sigma_t, y, drop)  # (B, [1+]T, K)
        s_logits = out.head  # (B, [1+]T_keep, K)
        n_cls = 1 if self.use_cls else 0
        t_patch = t_logits[:, n_cls:]  # (B, T, K)
        if ids_keep is not None:  # unmasked, the student's positions are all of them, in order
            t_patch = gather_tokens(t_patch, out.ids_keep)  # (B, T_keep, K): teacher at the student's positions
        tau_t = self.tau_t(step)
        ce_p, ent_p, kl_p = self.ce(s_logits[:, n_cls:], t_patch, self.center_patch, self.scfg.student_temp, tau_t)
        loss_patch = ce_p.mean()
        terms: Terms = {"loss_gen": loss_gen.detach(), "loss_patch": loss_patch.detach()}
        entropy, kl = ent_p.mean(), kl_p.mean()
        loss_d = loss_patch
        if self.use_cls:
            ce_c, ent_c, kl_c = self.ce(s_logits[:, 0], t_logits[:, 0], self.center_cls, self.scfg.student_temp,
                                        self.tau_t_cls(step))
            loss_cls = ce_c.mean()
            loss_d = loss_d + loss_cls
            terms["loss_cls"] = loss_cls.detach()
            entropy, kl = (entropy + ent_c.mean()) / 2, (kl + kl_c.mean()) / 2
        terms.update(loss_disc=loss_d.detach(), teacher_entropy=entropy.detach(), kl_teacher_student=kl.detach(),
                     tau_t=torch.tensor(tau_t))
        # The centers move after the loss used the old ones [ibot], and only once the step is taken
        # (after_step), so a skipped non-finite step cannot poison them; with train.grad_accum, from
        # the mean over the step's micro-batches.
        self._pending_centers = self.micro_mean(self._pending_centers, self._batch_centers(t_logits, n_cls))
        self.parts = {"gen": loss_gen, "disc": self.scfg.lambda_d * loss_d}
        return loss_gen + self.scfg.lambda_d * loss_d, terms

    def adjust_gradients(self, net: nn.Module, step: int) -> None:
        """DINO's last-layer freeze: no update of the prototype directions for the first steps."""
        if step < self.scfg.freeze_last_layer_steps:
            for p in unwrap(unwrap(net).model).head.last_layer.parameters():
                p.grad = None  # AdamW skips parameters without a gradient

    @torch.no_grad()
    def _batch_centers(self, t_logits: Tensor, n_cls: int) -> tuple[Tensor | None, Tensor]:
        """All-reduced batch means of the raw teacher logits: ([CLS] (1, K) or None, patches (1, 1, K))."""
        batch_cls = all_reduce_mean(t_logits[:, 0].mean(0, keepdim=True)) if n_cls else None  # (1, K)
        # mean(0).mean(0), not mean((0, 1)): equal counts make them the same mean, and on the CPU
        # torch's two-dim reduction of this strided view took 7.4 ms per call, against 0.3 (1 thread)
        batch_patch = all_reduce_mean(t_logits[:, n_cls:].mean(0).mean(0).view(1, 1, -1))  # (1, 1, K)
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
        teacher = list(self.teacher.named_parameters())
        torch._foreach_lerp_([p for _, p in teacher], [student[n].detach().to(p.dtype) for n, p in teacher],
                             1.0 - m)  # one call, not one per tensor
