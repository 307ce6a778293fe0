"""SD-DiT (Zhu et al., CVPR 2024): a DiT trained as a student whose encoder is aligned, DINO/iBOT
style, with an EMA teacher that sees the same image and noise at a lower noise level, plus the
ordinary EDM loss on the student's visible patches (SPEC section 3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from ..diffusion import EDMPrecond, edm_loss, precond_coeffs
from ..distributed import all_reduce_mean
from ..models.tokens import gather_tokens, per_patch_mean, select_patch_tokens
from ..runtime import unwrap
from .base import Objective, StepNoise, Terms, masked_mean


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


def self_distillation_ce(
    student_logits: Tensor, teacher_logits: Tensor, center: Tensor, tau_s: float | Tensor, tau_t: float | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cross-entropy H(p_T, p_S) per token, with p_T = softmax((t - C)/tau_T), p_S = softmax(s/tau_S).

    Returns (ce, teacher_entropy, kl) per token and the mean teacher distribution over all tokens
    (K,), all in float32 (softmax in bf16 is what makes DINO-style losses drift: SPEC section 6).
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        # log p_T first and p_T = exp(log p_T): the entropy then needs no clamp and log of p_T
        # (two more passes over B x T x K)
        log_p_t = F.log_softmax((teacher_logits.float() - center) / tau_t, dim=-1).detach()  # (..., K)
        p_t = log_p_t.exp()  # (..., K)
        log_p_s = F.log_softmax(student_logits.float() / tau_s, dim=-1)  # (..., K)
        ce = -(p_t * log_p_s).sum(-1)  # (...)
        entropy = -(p_t * log_p_t).sum(-1)  # (...)
        return ce, entropy, ce.detach() - entropy, p_t.flatten(0, -2).mean(0)


def alignment_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """SRA's self-alignment per token: smooth-L1 (beta 0.05) of the projected student tokens against
    the teacher's raw tokens, mean over channels. (..., D), (..., D) -> (...)."""
    return F.smooth_l1_loss(student.float(), teacher.float().detach(), beta=0.05, reduction="none").mean(-1)


def prototypes_used(p_mean: Tensor) -> Tensor:
    """exp(entropy of the batch-mean teacher distribution): how many prototypes the batch uses (1..K)."""
    return torch.exp(-(p_mean * p_mean.clamp_min(1e-30).log()).sum())


@torch.no_grad()
def batch_spread(x: Tensor) -> Tensor:
    """Mean over positions of the unbiased std over the batch (dim 0), as `x.std(0).mean()`: 0 means
    every image gets the same target. Two passes written in place: on the CPU torch's `std(0)` of a
    (32, 49, 1024) tensor took 12 ms (a tenth of an SD-DiT step), this 0.6. (B, ...) -> ()."""
    x = x.float()
    d = x - x.mean(0)  # (B, ...)
    return d.mul_(d).sum(0).div_(x.shape[0] - 1).sqrt_().mean()


def batch_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean over tokens, then over the batch, samples weighted by `weight` (B,) when given (0 = left
    out, counted in the mean as 0). Dividing by the batch, not by the weights' sum, keeps the mean of
    micro-batch (and rank) means equal to the global batch's. (B, ...) -> ()."""
    per_sample = values.flatten(1).mean(1)  # (B,)
    return per_sample.mean() if weight is None else (per_sample * weight).mean()


class SDDiTObjective(Objective):
    """L = L_gen(visible patches) + lambda_D * (CE_image + mean_i CE_patch_i).

    The image-level term reads a [CLS] token or the mean of the patch tokens (sddit.image_token);
    with sddit.disc_loss=align, L_D is SRA's alignment of the patch tokens instead. Holds the teacher
    (EMA of the student's embedders, [CLS], encoder blocks and head) as a submodule and the two
    centers as buffers, so `state_dict()` saves them; the teacher is never inside DDP and never in
    the optimiser.
    """

    name = "sddit"

    def __init__(self, cfg: Config, net: EDMPrecond):
        super().__init__(cfg, net)
        self.scfg = cfg.sddit
        student = unwrap(unwrap(net).model)
        if getattr(student, "head", None) is None:
            raise ConfigError("objective=sddit needs a model with a projection head: set model.head_dim > 0")
        # 1 when the head's tokens start with an image-level token ([CLS] or the pooled patches)
        self.n_img = int(bool(student.use_cls_token or student.head_pool))
        self.align = self.scfg.disc_loss == "align"
        self.teacher = student.make_teacher()
        if self.scfg.teacher_head_block:  # the teacher's tokens from another (e.g. deeper) block than the student's
            # Config.validate says this first, before the run directory exists; with a model.preset only
            # the built model knows its depth, so the check stays here too.
            if self.scfg.teacher_head_block > student.encoder_depth:
                raise ConfigError(
                    f"sddit.teacher_head_block={self.scfg.teacher_head_block} is past the encoder's "
                    f"{student.encoder_depth} blocks: set it to at most {student.encoder_depth}"
                )
            self.teacher.head_block = self.scfg.teacher_head_block
        self.log_k = math.log(cfg.model.head_dim)
        self._uniform_since: dict[str, int | None] = {"image": None, "patch": None}  # see warnings()
        K = cfg.model.head_dim
        device = next(student.parameters()).device
        self.register_buffer(
            "center_cls", torch.zeros(1, K, device=device)
        )  # the image token's center (named for [CLS])
        self.register_buffer("center_patch", torch.zeros(1, 1, K, device=device))  # patch logits' center
        self._pending_centers: tuple[Tensor | None, Tensor] | None = None
        self.temp_warmup_steps = self.scfg.teacher_temp_warmup_steps or int(0.3 * cfg.train.max_steps)
        # With train.compile the cross-entropies are compiled too: eager, each of their ~12 element-wise
        # passes over B x T x K floats is a kernel of its own
        self._compiled_ce = torch.compile(self_distillation_ce, dynamic=False) if cfg.train.compile else None
        # ... and the teacher's forward, which train.compile (the student's wrapper) does not reach: eager,
        # it cost ~1/5 of a compiled DiT step at 256 tokens (benchmarks/step_time.py's floor column)
        self._teacher_run = torch.compile(self._teacher_forward, dynamic=False) if cfg.train.compile else None

    def ce(
        self, student_logits: Tensor, teacher_logits: Tensor, center: Tensor, tau_s: float, tau_t: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`self_distillation_ce`, compiled when train.compile is on."""
        if self._compiled_ce is None:
            return self_distillation_ce(student_logits, teacher_logits, center, tau_s, tau_t)
        # temperatures as 0-d tensors: a float is baked into the graph, so the warming-up tau_T would
        # recompile it every step
        dev = student_logits.device
        return self._compiled_ce(
            student_logits, teacher_logits, center, torch.tensor(tau_s, device=dev), torch.tensor(tau_t, device=dev)
        )

    # -- schedules
    def teacher_sigma(self, n: StepNoise) -> Tensor:
        s, sigma_s = self.scfg, n.sigma
        if s.teacher_sigma == "min":
            return torch.full_like(sigma_s, self.dcfg.sigma_min)
        if s.teacher_sigma == "fixed":
            return torch.full_like(sigma_s, s.teacher_sigma_value)
        if s.teacher_sigma == "shift":  # SRA: t_T = t_S - U(0, shift) on the linear path x = (1-t) x0 + t eps
            total, _ = self.global_rows(sigma_s.shape[0])
            u = torch.rand(total, device=sigma_s.device, generator=n.generator)[n.rows]  # (B,)
            t = (sigma_s / (1 + sigma_s) - s.teacher_time_shift * u).clamp_min(0)  # (B,)
            return (t / (1 - t)).clamp_min(self.dcfg.sigma_min)  # the same scaled point of the VE path
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
    def teacher_tokens(
        self, x_t: Tensor, sigma_t: Tensor, y: Tensor, drop: Tensor, head_ids: Tensor | None = None
    ) -> Tensor:
        """Teacher head logits (dino) or raw tokens (align) on [image token +] all tokens of
        x_T = x0 + sigma_T eps, with EDM's input scaling (only the patch tokens at `head_ids`, if given).

        The teacher encoder stops at the block its head reads. Its conditioning c_noise comes from
        max(sigma_T, teacher_cond_sigma_min): sigma_min itself lies ~4 sd below the student's
        training noise levels, where the timestep embedding was never trained.
        """
        _, _, c_in, _ = precond_coeffs(sigma_t.view(-1, 1, 1, 1), self.dcfg.sigma_data)
        sigma_cond = (
            sigma_t.clamp_min(self.scfg.teacher_cond_sigma_min) if self.scfg.teacher_cond_sigma_min > 0 else sigma_t
        )
        _, _, _, c_noise = precond_coeffs(sigma_cond.view(-1, 1, 1, 1), self.dcfg.sigma_data)
        run = self._teacher_run or self._teacher_forward
        return run(c_in * x_t, c_noise.flatten(), y, drop, head_ids)

    def _teacher_forward(
        self, x_in: Tensor, c_noise: Tensor, y: Tensor, drop: Tensor, head_ids: Tensor | None = None
    ) -> Tensor:
        """The teacher encoder to its head's block, then the head (dino) or nothing (align)."""
        enc = self.teacher.encode(x_in, c_noise, y, force_drop_ids=drop, stop_after_head_block=True)
        tokens = select_patch_tokens(enc.head_tokens, self.n_img, head_ids)  # (B, [1+]T_head, D)
        if self.align:
            return tokens.float()  # SRA's target is the teacher's block output itself
        return self.teacher.head(tokens).float()  # (B, [1+]T_head, K)

    def draw_head_ids(self, n: StepNoise, num_tokens: int) -> Tensor | None:
        """(B, T_head) sorted random patch positions per image for the head (sddit.head_token_fraction), or None."""
        fraction = self.scfg.head_token_fraction
        if fraction >= 1:
            return None
        total, _ = self.global_rows(n.sigma.shape[0])
        scores = torch.rand(total, num_tokens, device=n.eps.device, generator=n.generator)[n.rows]
        keep = max(1, round(fraction * num_tokens))
        return scores.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, T_head)

    def forward(self, net: nn.Module, x0: Tensor, y: Tensor, step: int) -> tuple[Tensor, Terms]:
        n = self.draw(x0, step)  # the same eps for student and teacher: one PF-ODE trajectory
        sigma_s, eps, drop = n.sigma, n.eps, n.drop  # drop: the teacher sees the same (maybe null) label
        ids_keep = self.draw_mask(n, self.num_tokens(x0), self.scfg.mask_ratio)  # (B, T_keep) or None
        head_ids = self.draw_head_ids(n, self.num_tokens(x0))  # (B, T_head) or None (only when unmasked)
        sigma_t = self.teacher_sigma(n)  # (B,)
        x_s = x0 + sigma_s.view(-1, 1, 1, 1) * eps  # (B, C, H, W)
        x_t = x0 + sigma_t.view(-1, 1, 1, 1) * eps  # (B, C, H, W)

        out = net(x_s, sigma_s, y, return_tokens=True, ids_keep=ids_keep, force_drop_ids=drop, head_ids=head_ids)
        visible = 1.0 - out.mask.float()  # (B, T)
        per_patch = per_patch_mean(
            edm_loss(out.denoised.float(), x0, sigma_s.view(-1, 1, 1, 1), self.dcfg.sigma_data), self.patch
        )
        loss_gen = masked_mean(per_patch, visible)

        t_out = self.teacher_tokens(x_t, sigma_t, y, drop, head_ids)  # (B, [1+]T or T_head, K or D)
        s_out = out.head  # (B, [1+]T_keep or T_head, K or D)
        k = self.n_img
        t_patch = t_out[:, k:]  # (B, T, K or D)
        if ids_keep is not None:  # unmasked, the student's positions are all of them, in order
            t_patch = gather_tokens(t_patch, out.ids_keep)  # (B, T_keep, .): teacher at the student's positions
        band = (sigma_s <= self.scfg.disc_sigma_max).float() if self.scfg.disc_sigma_max > 0 else None  # (B,)
        terms: Terms = {"loss_gen": loss_gen.detach()}
        if self.align:
            loss_d = batch_mean(alignment_loss(s_out[:, k:], t_patch), band)
            terms.update(loss_align=loss_d.detach(), teacher_token_std=batch_spread(t_out))  # per position, over images
        else:
            loss_d = self.dino_terms(s_out, t_out, t_patch, band, step, terms)
            # The centers move after the loss used the old ones [ibot], and only once the step is taken
            # (after_step), so a skipped non-finite step cannot poison them; with train.grad_accum, from
            # the mean over the step's micro-batches.
            self._pending_centers = self.micro_mean(self._pending_centers, self._batch_centers(t_out, k))
        terms["loss_disc"] = loss_d.detach()
        self.parts = {"gen": loss_gen, "disc": self.scfg.lambda_d * loss_d}
        return loss_gen + self.scfg.lambda_d * loss_d, terms

    def dino_terms(
        self, s_out: Tensor, t_out: Tensor, t_patch: Tensor, band: Tensor | None, step: int, terms: Terms
    ) -> Tensor:
        """CE_image + mean_i CE_patch_i, and each term's liveness monitors into `terms`: the teacher's
        entropy (ln K = uniform: no signal), the prototypes the batch uses, and the batch std of its
        logits (0 = the same target for every image)."""
        k, tau_t = self.n_img, self.tau_t(step)
        pairs = [("patch", s_out[:, k:], t_patch, tau_t, t_out[:, k:])]
        if k:
            pairs.append(("image", s_out[:, 0], t_out[:, 0], self.tau_t_cls(step), t_out[:, 0]))
        loss_d = s_out.new_zeros(())
        for term, student, teacher, tau, spread in pairs:
            center = self.center_patch if term == "patch" else self.center_cls
            ce, entropy, kl, p_mean = self.ce(student, teacher, center, self.scfg.student_temp, tau)
            loss = batch_mean(ce if ce.dim() > 1 else ce[:, None], band)
            loss_d = loss_d + loss
            # the spread monitors are over this forward's rows (per micro-batch, per rank, then averaged);
            # the logits' std at each position over the images, before the gather to the visible positions
            terms.update(
                {
                    f"loss_{term}": loss.detach(),
                    f"teacher_entropy_{term}": entropy.mean(),
                    f"kl_teacher_student_{term}": kl.mean(),
                    f"prototypes_used_{term}": prototypes_used(p_mean),
                    f"teacher_logit_std_{term}": batch_spread(spread),
                }
            )
        terms["tau_t"] = torch.tensor(tau_t)
        return loss_d

    def warnings(self, step: int, record: dict) -> list[str]:
        """One line when a term's teacher has stayed within 1% of uniform (entropy >= 0.99 ln K) for
        a sustained stretch (a fifth of the run, at most 500 steps): its cross-entropy's gradient
        p_S - p_T then pulls the student to uniform too, and the term carries no signal."""
        out = []
        sustain = max(self.cfg.train.log_every, min(500, self.cfg.train.max_steps // 5))
        for term, since in self._uniform_since.items():
            h = record.get(f"teacher_entropy_{term}")
            if h is None or h < 0.99 * self.log_k:
                self._uniform_since[term] = None
                continue
            if since is None:
                self._uniform_since[term] = since = step
            if since >= 0 and step - since >= sustain:
                hint = (
                    "sddit.image_token=mean gives it an image-dependent token"
                    if term == "image"
                    else ("a lower teacher temperature or sddit.teacher_sigma=shift may help")
                )
                out.append(
                    f"warning: the {term}-level teacher distribution has been within 1% of uniform "
                    f"(entropy {h:.3f} of ln K = {self.log_k:.3f}) since step {since}: that term carries no "
                    f"signal; {hint}"
                )
                self._uniform_since[term] = -1  # warned: not again until it leaves uniform
        return out

    def adjust_gradients(self, net: nn.Module, step: int) -> None:
        """DINO's last-layer freeze: no update of the prototype directions for the first steps."""
        if step < self.scfg.freeze_last_layer_steps and not self.align:  # the projector has no prototype layer
            for p in unwrap(unwrap(net).model).head.last_layer.parameters():
                p.grad = None  # AdamW skips parameters without a gradient

    @torch.no_grad()
    def _batch_centers(self, t_logits: Tensor, n_img: int) -> tuple[Tensor | None, Tensor]:
        """All-reduced batch means of the raw teacher logits: (image token (1, K) or None, patches (1, 1, K))."""
        batch_cls = all_reduce_mean(t_logits[:, 0].mean(0, keepdim=True)) if n_img else None  # (1, K)
        # mean(0).mean(0), not mean((0, 1)): equal counts make them the same mean, and on the CPU
        # torch's two-dim reduction of this strided view took 7.4 ms per call, against 0.3 (1 thread)
        batch_patch = all_reduce_mean(t_logits[:, n_img:].mean(0).mean(0).view(1, 1, -1))  # (1, 1, K)
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
        torch._foreach_lerp_(
            [p for _, p in teacher], [student[n].detach().to(p.dtype) for n, p in teacher], 1.0 - m
        )  # one call, not one per tensor
