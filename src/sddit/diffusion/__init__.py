"""EDM (Karras et al. 2022): the denoiser and its loss (`edm.py`), the sampler (`sampler.py`), and a
wrapper that samples official DDPM-trained DiT checkpoints with the same sampler (`vp.py`)."""

from .edm import EDMPrecond, as_batch_sigma, edm_loss, loss_weight, precond_coeffs, sample_sigma
from .sampler import EDM_CHURN_RANGE, StackedRandomGenerator, edm_sampler, guided_denoiser, sigma_steps

__all__ = [
    "EDMPrecond",
    "as_batch_sigma",
    "edm_loss",
    "loss_weight",
    "precond_coeffs",
    "sample_sigma",
    "EDM_CHURN_RANGE",
    "StackedRandomGenerator",
    "edm_sampler",
    "guided_denoiser",
    "sigma_steps",
]
