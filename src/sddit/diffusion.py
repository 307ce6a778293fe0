"""The EDM diffusion formulation (Karras et al. 2022) shared by DiT, MaskDiT and SD-DiT.

Everything a model needs to be trained and sampled as an EDM denoiser lives here, written as small
units that mirror the paper's equations one to one:

* preconditioning (Karras et al. 2022, Table 1, column "EDM"; Sec. 5 / Appendix B.6):
  ``D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s))``;
* training: the lognormal noise distribution ``ln s ~ N(P_mean, P_std^2)``, the loss weight
  ``lambda(s)`` and the weighted squared error ``lambda(s) ||D(x0 + s n; s) - x0||^2`` (eq. 2 / 8);
* sampling: the time discretisation (eq. 5), the stochastic Heun sampler (Algorithm 2) with its
  deterministic special case (Algorithm 1, ``S_churn = 0``), per-sample seeding, and
  classifier-free guidance on the denoiser.

Conventions. ``sigma`` is the noise standard deviation ``s`` (EDM uses ``t = s``, i.e. ``s(t) = t``
and ``s'(t) = 1``, scale ``s(t) = 1``), so the probability-flow ODE is
``dx/ds = (x - D(x; s)) / s`` (Karras et al. 2022, eq. 1 with eq. 3).
``sigma_data`` (``sd`` below) is the standard deviation of the data; 0.5 for SD-VAE latents scaled by
0.18215, as in MaskDiT.

The code follows the facts of NVlabs/edm (``training/loss.py``, ``training/networks.py``
``EDMPrecond`` and ``generate.py``) but is written independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "precond_coeffs",
    "EDMPrecond",
    "sample_sigma",
    "loss_weight",
    "edm_loss",
    "sigma_steps",
    "StackedRandomGenerator",
    "guided_denoiser",
    "edm_sampler",
]


# ----------------------------------------------------------------------------------------------
# Shape helpers.


def _as_batch_sigma(sigma: Tensor | float, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
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


def precond_coeffs(
    sigma: Tensor, sigma_data: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
      return a ``dict`` with the raw output under ``"out"`` plus auxiliary tensors (token ids,
      encoder features, ...). In that case the preconditioning is applied to ``out["out"]`` and a
      shallow copy of the dict is returned with ``"denoised"`` (the ``D`` tensor) added; everything
      else is passed through untouched. Positions of dropped tokens in ``out["out"]`` are whatever
      the decoder produced there; the loss decides which positions count.
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
    ) -> Tensor | dict[str, Any]:
        x = x.to(torch.float32)
        sigma = _as_batch_sigma(sigma, x)  # (B, 1, ..., 1), float32
        c_skip, c_out, c_in, c_noise = precond_coeffs(sigma, self.sigma_data)

        out = self.model(c_in * x, c_noise.flatten(), class_labels, **model_kwargs)
        F_x = out["out"] if isinstance(out, dict) else out
        if F_x.shape[1] > x.shape[1]:  # learn_sigma=True: drop the variance channels
            F_x = F_x[:, : x.shape[1]]
        D_x = c_skip * x + c_out * F_x.to(torch.float32)

        if isinstance(out, dict):
            out = dict(out)
            out["denoised"] = D_x
            return out
        return D_x


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
    sigma = _as_batch_sigma(sigma, x0)
    weight = loss_weight(sigma, sigma_data)
    return weight * (denoised.to(torch.float32) - x0.to(torch.float32)) ** 2


# ----------------------------------------------------------------------------------------------
# Sampling: Karras et al. 2022, eq. 5 and Algorithm 2.


def sigma_steps(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ``N + 1`` noise levels ``s_0 > ... > s_{N-1} = s_min > s_N = 0`` of eq. 5, in float64.

    ``s_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho`` for ``i < N``, and
    ``s_N = 0``. ``rho = 7`` shortens the steps near ``s_min`` where the ODE curvature (and the
    truncation error) is largest (Karras et al. 2022, Sec. 3, Fig. 13). With ``N = 1`` the single
    level is ``s_max``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:
        t = torch.tensor([float(sigma_max)], dtype=torch.float64, device=device)
    else:
        i = torch.arange(num_steps, dtype=torch.float64, device=device)
        t = (
            sigma_max ** (1 / rho)
            + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
        ) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])  # s_N = 0


class StackedRandomGenerator:
    """Per-sample random streams: sample ``k`` of a batch draws only from ``Generator(seed_k)``.

    Why: a sample must be reproducible from its seed alone, independently of the batch size or of
    how seeds are split across batches and ranks (the same property as NVlabs/edm ``generate.py``).
    The first dimension of every requested ``size`` must equal ``len(seeds)``.
    """

    def __init__(self, device: torch.device | str, seeds: Sequence[int]) -> None:
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(self.device).manual_seed(int(seed) % (1 << 32)) for seed in seeds
        ]

    def _check(self, size: Sequence[int]) -> tuple[int, ...]:
        size = tuple(int(s) for s in size)
        if size[0] != len(self.generators):
            raise ValueError(f"size[0]={size[0]} but this generator holds {len(self.generators)} seeds")
        return size

    def randn(
        self,
        size: Sequence[int],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Standard normal noise of ``size``, row ``k`` from seed ``k``."""
        size = self._check(size)
        out = torch.stack(
            [torch.randn(size[1:], generator=g, dtype=dtype, device=self.device) for g in self.generators]
        )
        return out if device is None else out.to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        """``randn`` with the shape, dtype and device of ``x`` (drop-in for ``torch.randn_like``)."""
        return self.randn(x.shape, dtype=x.dtype, device=x.device)

    def randint(self, *args: Any, size: Sequence[int], **kwargs: Any) -> Tensor:
        """``torch.randint(*args, size=size, ...)`` with row ``k`` from seed ``k`` (e.g. class labels)."""
        size = self._check(size)
        device = kwargs.pop("device", None)
        out = torch.stack(
            [
                torch.randint(*args, size=size[1:], generator=g, device=self.device, **kwargs)
                for g in self.generators
            ]
        )
        return out if device is None else out.to(device)


def guided_denoiser(
    net: Callable[..., Tensor], cfg_scale: float, null_label: int | None
) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """Classifier-free guidance on a denoiser: ``D_w = D_u + w (D_c - D_u)``.

    ``net(x, sigma, class_labels) -> D``. The conditional batch (given labels) and the unconditional
    batch (every label replaced by ``null_label``, DiT's extra embedding row ``num_classes``) run in
    ONE forward of twice the batch size, which is faster than two calls and exactly what the DiT
    training-time label dropout taught the model.

    Guidance is applied to the denoiser output on ALL channels. Since ``D = c_skip x + c_out F`` and
    ``c_skip x`` is the same for both halves, ``D_u + w (D_c - D_u) = c_skip x + c_out (F_u + w (F_c -
    F_u))``: guiding ``D`` is the same as guiding ``F`` (the MaskDiT convention), and unlike the DiT
    code (which guides only the first 3 of 4 latent channels by default) every channel is guided.

    With ``cfg_scale == 1`` or ``class_labels is None`` the wrapper is a plain conditional call.
    """
    if cfg_scale != 1 and null_label is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1) needs null_label (= num_classes)")

    def denoise(x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        if cfg_scale == 1 or class_labels is None:
            return net(x, sigma, class_labels)
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma_in = sigma if sigma.numel() == 1 else torch.cat([sigma, sigma])
        labels_in = torch.cat([class_labels, torch.full_like(class_labels, null_label)])
        D = net(torch.cat([x, x]), sigma_in, labels_in)
        D_c, D_u = D.chunk(2)
        return D_u + cfg_scale * (D_c - D_u)

    return denoise


@torch.no_grad()
def edm_sampler(
    net: Callable[..., Tensor],
    latents: Tensor,
    class_labels: Tensor | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    solver: str = "heun",
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    cfg_scale: float = 1.0,
    null_label: int | None = None,
    progress: bool = False,
) -> Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2; Algorithm 1 when ``S_churn = 0``).

    Args:
        net: denoiser ``net(x, sigma, class_labels) -> D`` (e.g. an :class:`EDMPrecond`); it gets
            ``x`` in float32 and ``sigma`` as a 0-d float32 tensor shared by the batch.
        latents: unit-variance Gaussian noise ``(B, C, H, W)``; scaled by ``s_0 = sigma_max`` here.
        class_labels: ``(B,)`` integer labels or ``None``.
        num_steps: ``N``; the Heun solver uses ``2N - 1`` network evaluations (no correction on the
            last step, which lands on ``s_N = 0`` where ``d = (x - D) / s`` is undefined).
        S_churn, S_min, S_max, S_noise: stochasticity (Algorithm 2); ``S_churn = 0`` is the
            deterministic PF-ODE sampler.
        solver: ``"heun"`` (2nd order, Algorithm 2) or ``"euler"`` (1st order, lines 9-10 only).
        randn_like: churn-noise source; pass :meth:`StackedRandomGenerator.randn_like` for
            per-sample reproducibility.
        cfg_scale, null_label: classifier-free guidance (see :func:`guided_denoiser`).
        progress: show a tqdm bar over the steps.

    Precision: the iterates ``x_i`` are accumulated in float64 (as NVlabs/edm does; the ODE step
    ``(t_next - t_hat) * d`` is small relative to ``x`` near ``s_min``), while the network is
    always called with float32 inputs. The result is returned in ``latents.dtype``.
    """
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    if cfg_scale != 1:
        if null_label is None:
            raise ValueError("cfg_scale != 1 needs null_label (the null class index, = num_classes)")
        net = guided_denoiser(net, cfg_scale, null_label)

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        return net(x.to(torch.float32), t.to(torch.float32), class_labels).to(torch.float64)

    t_steps = sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device)  # eq. 5

    # Algorithm 2, line 1: x_0 ~ N(0, t_0^2 I).
    x_next = latents.to(torch.float64) * t_steps[0]
    steps = list(enumerate(zip(t_steps[:-1], t_steps[1:])))
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="edm_sampler", unit="step")
    for i, (t_cur, t_next) in steps:  # line 2: for i in 0..N-1
        x_cur = x_next

        # Lines 3-6: temporarily raise the noise level to t_hat = (1 + gamma_i) t_i by adding fresh
        # noise of variance t_hat^2 - t_i^2 (only within [S_min, S_max]).
        gamma = (
            min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
        )
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur)

        # Lines 7-8: Euler step from t_hat to t_{i+1}; d = dx/dt = (x - D(x; t)) / t (eq. 1 + eq. 3).
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Lines 9-11: 2nd-order (trapezoidal) correction, skipped on the last step where t_{i+1} = 0.
        if solver == "heun" and i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next.to(latents.dtype)
