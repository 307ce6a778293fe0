"""The EDM diffusion formulation (Karras et al. 2022) shared by DiT, MaskDiT and SD-DiT.

Everything a model needs to be trained and sampled as an EDM denoiser lives here, written as small
Preconditioning (Karras et al. 2022, Table 1, column "EDM"; Sec. 5 / Appendix B.6):
``D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s))``; training: the lognormal noise
distribution ``ln s ~ N(P_mean, P_std^2)``, the loss weight ``lambda(s)`` and the weighted squared
error ``lambda(s) ||D(x0 + s n; s) - x0||^2`` (eq. 2 / 8). Sampling is in ``sampler.py``.

Conventions. ``sigma`` is the noise standard deviation ``s`` (EDM uses ``t = s``, i.e. ``s(t) = t``
and ``s'(t) = 1``, scale ``s(t) = 1``), so the probability-flow ODE is
``dx/ds = (x - D(x; s)) / s`` (Karras et al. 2022, eq. 1 with eq. 3).
``sigma_data`` (``sd`` below) is the standard deviation of the data; 0.5 for SD-VAE latents scaled by
0.18215, as in MaskDiT.

The code follows the facts of NVlabs/edm (``training/loss.py``, ``training/networks.py``
``EDMPrecond``) but is written independently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["as_batch_sigma", "precond_coeffs", "EDMPrecond", "sample_sigma", "loss_weight", "edm_loss"]

# ----------------------------------------------------------------------------------------------
# Shape helpers.


def as_batch_sigma(sigma: Tensor | float, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Return ``sigma`` as a ``dtype`` tensor of shape ``(B, 1, ..., 1)`` that broadcasts against ``x``.

    Callers hand us a Python float, a 0-d tensor (the sampler: one sigma for the whole batch), a
    ``(B,)`` vector (training: one sigma per sample) or an already-broadcastable ``(B, 1, 1, 1)``.
    Normalising once here keeps every formula below free of shape bookkeeping.
    """
    batch = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.numel() != batch:
        raise ValueError(f"sigma has {sigma.numel()} values for a batch of {batch}")
    return sigma.reshape(batch, *([1] * (x.ndim - 1)))


# ----------------------------------------------------------------------------------------------
# Preconditioning: Karras et al. 2022, Table 1 ("Network and preconditioning", EDM column).


def precond_coeffs(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four EDM preconditioning coefficients at noise level ``sigma`` (any shape, elementwise).

    Why these values (Karras et al. 2022, Appendix B.6): for ``x = x0 + s n`` with ``Var(x0) = sd^2``
    * ``c_in = 1 / sqrt(s^2 + sd^2)`` makes the network input unit-variance;
    * ``c_skip = sd^2 / (s^2 + sd^2)`` and ``c_out = s sd / sqrt(s^2 + sd^2)`` make the *effective
      training target* of ``F``, ``(x0 - c_skip x) / c_out``, unit-variance, with ``c_skip`` chosen
      to minimise ``c_out`` (so errors of ``F`` are amplified as little as possible);
    * ``c_noise = ln(s) / 4`` is an empirically chosen noise conditioning of moderate range.
    As ``s -> 0``: ``c_skip -> 1`` and ``c_out -> 0``, so ``D(x; s) -> x`` whatever ``F`` outputs.
    """
    sigma = torch.as_tensor(sigma)
    sd2 = sigma_data**2
    s2 = sigma**2
    c_skip = sd2 / (s2 + sd2)  # Table 1: c_skip(s) = sd^2 / (s^2 + sd^2)
    c_out = sigma * sigma_data / (s2 + sd2).sqrt()  # Table 1: c_out(s) = s sd / sqrt(s^2 + sd^2)
    c_in = 1 / (s2 + sd2).sqrt()  # Table 1: c_in(s) = 1 / sqrt(s^2 + sd^2)
    c_noise = sigma.log() / 4  # Table 1: c_noise(s) = ln(s) / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Wrap a raw network ``F`` into the EDM denoiser ``D(x; s, y) = c_skip x + c_out F(c_in x; c_noise, y)``.

    The wrapped ``model`` has the DiT call signature ``model(x, t, y, **kwargs)`` where ``t`` is the
    ``(B,)`` noise conditioning (here ``c_noise``) and ``y`` the integer class labels (or ``None``).

    Details that matter in practice:

    * ``sigma`` may be a float, a 0-d tensor, ``(B,)`` or ``(B, 1, 1, 1)``; the model always receives
      ``c_noise`` as a ``(B,)`` vector.
    * A DiT built with ``learn_sigma=True`` outputs ``2C`` channels (mean and variance of the DDPM
      parameterisation); EDM has no use for the variance half, so only the first ``C = x.shape[1]``
      channels are taken as ``F``. This keeps official DiT checkpoints usable under EDM.
    * Under ``torch.autocast`` the model may return bf16/fp16; ``F`` is cast to float32 before the
      skip connection so the precond arithmetic (which subtracts nearly equal quantities at low
      noise) is always done in float32. The returned ``D`` is float32.
    * Masked objectives (MaskDiT, SD-DiT) pass ``model_kwargs`` (e.g. a mask) that make the model
      return a dataclass (``models.SplitOutput``) with the raw output in ``.out`` plus auxiliary
      tensors (token ids, encoder tokens, head logits). The preconditioning is then applied to
      ``.out`` and a copy with ``.denoised`` (the ``D`` tensor) set is returned. Positions of
      dropped tokens in ``.out`` are whatever the decoder produced there; the loss decides which
      positions count.
    """

    def __init__(self, model: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | float,
        class_labels: Tensor | None = None,
        **model_kwargs: Any,
    ) -> Tensor | Any:
        x = x.to(torch.float32)
        sigma = as_batch_sigma(sigma, x)  # (B, 1, ..., 1), float32
        c_skip, c_out, c_in, c_noise = precond_coeffs(sigma, self.sigma_data)

        out = self.model(c_in * x, c_noise.flatten(), class_labels, **model_kwargs)
        structured = dataclasses.is_dataclass(out)
        F_x = out.out if structured else out
        if F_x.shape[1] > x.shape[1]:  # learn_sigma=True: drop the variance channels
            F_x = F_x[:, : x.shape[1]]
        D_x = c_skip * x + c_out * F_x.to(torch.float32)

        return dataclasses.replace(out, denoised=D_x) if structured else D_x


# ----------------------------------------------------------------------------------------------
# Training: Karras et al. 2022, Table 1 ("Training" rows) and eq. 2 / 8.


def sample_sigma(
    batch_size: int,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``(B,)`` training noise levels with ``ln s ~ N(P_mean, P_std^2)`` (Table 1, ``p_train``).

    The lognormal concentrates training on the intermediate noise levels where the loss can still
    be reduced (Karras et al. 2022, Sec. 5, Fig. 5a); very low and very high levels are either
    trivial or hopeless.
    """
    rnd_normal = torch.randn(batch_size, device=device, generator=generator)
    return (rnd_normal * P_std + P_mean).exp()


def loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """``lambda(s) = (s^2 + sd^2) / (s sd)^2`` (Table 1, loss weighting).

    Why: ``lambda(s) = 1 / c_out(s)^2``, so ``lambda ||D - x0||^2 = ||F - F_target||^2`` with a
    unit-variance target (eq. 8): every noise level starts with the same unit loss magnitude.
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoised: Tensor, x0: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """Per-element weighted denoising error ``lambda(s) (D(x0 + s n; s) - x0)^2`` (eq. 2 with Table 1).

    Returned with the shape of ``x0``, unreduced: the DiT baseline takes the mean, the masked
    objectives (MaskDiT, SD-DiT) first average per patch and then over visible patches only.
    ``sigma`` may be a float, ``(B,)`` or ``(B, 1, ..., 1)``; the result is float32 (or wider).
    """
    sigma = as_batch_sigma(sigma, x0)
    weight = loss_weight(sigma, sigma_data)
    return weight * (denoised.to(torch.float32) - x0.to(torch.float32)) ** 2
