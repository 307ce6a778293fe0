"""EDM sampling (Karras et al. 2022): the time discretisation (eq. 5), the stochastic Heun sampler
(Algorithm 2) with its deterministic special case (Algorithm 1, ``S_churn = 0``), per-sample seeding,
and classifier-free guidance on the denoiser. Follows the facts of NVlabs/edm ``generate.py``,
written independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["sigma_steps", "StackedRandomGenerator", "guided_denoiser", "edm_sampler"]


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
        t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])  # s_N = 0


class StackedRandomGenerator:
    """Per-sample random streams: sample ``k`` of a batch draws only from ``Generator(seed_k)``.

    Why: a sample must be reproducible from its seed alone, independently of the batch size or of
    how seeds are split across batches and ranks (the same property as NVlabs/edm ``generate.py``).
    The first dimension of every requested ``size`` must equal ``len(seeds)``.
    """

    def __init__(self, device: torch.device | str, seeds: Sequence[int]) -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

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
            [torch.randint(*args, size=size[1:], generator=g, device=self.device, **kwargs) for g in self.generators]
        )
        return out if device is None else out.to(device)


def guided_denoiser(
    net: Callable[..., Tensor],
    cfg_scale: float,
    null_label: int | None,
    interval: tuple[float, float] = (0.0, math.inf),
) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """Classifier-free guidance on a denoiser: ``D_w = D_u + w (D_c - D_u)``.

    ``interval = (lo, hi)``: guide only at noise levels ``lo < sigma <= hi`` and call the conditional
    denoiser alone elsewhere (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval":
    guidance at high noise collapses diversity, at low noise it does little). Outside the interval a
    step costs one batch instead of two. The default ``(0, inf)`` guides everywhere.

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
        if sigma.numel() == 1 and not interval[0] < float(sigma) <= interval[1]:
            return net(x, sigma, class_labels)
        sigma_in = sigma if sigma.numel() == 1 else torch.cat([sigma, sigma])
        labels_in = torch.cat([class_labels, torch.full_like(class_labels, null_label)])
        D = net(torch.cat([x, x]), sigma_in, labels_in)
        D_c, D_u = D.chunk(2)
        return D_u + cfg_scale * (D_c - D_u)

    return denoise


# EDM's stochastic sampling range and noise inflation for ImageNet-64 (Karras et al. 2022, Table 5):
# what `eval.churn` / `sddit eval --churn` use with S_churn.
EDM_CHURN_RANGE = {"S_min": 0.05, "S_max": 50.0, "S_noise": 1.003}


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
    cfg_interval: tuple[float, float] = (0.0, math.inf),
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
        cfg_scale, null_label, cfg_interval: classifier-free guidance, applied at noise levels in
            ``(lo, hi]`` of ``cfg_interval`` (see :func:`guided_denoiser`).
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
        net = guided_denoiser(net, cfg_scale, null_label, tuple(cfg_interval))

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
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
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
