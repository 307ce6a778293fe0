"""Tests for sddit.diffusion: EDM preconditioning, training loss pieces and the Heun sampler."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from sddit.diffusion import (
    EDMPrecond,
    StackedRandomGenerator,
    edm_loss,
    edm_sampler,
    guided_denoiser,
    loss_weight,
    precond_coeffs,
    sample_sigma,
    sigma_steps,
)

SD = 0.5  # sigma_data
SIGMAS = [0.002, 0.1, 0.5, 1.0, 5.0, 80.0]


# ----------------------------------------------------------------------------------------------
# Helpers.


@dataclasses.dataclass
class _Structured:
    """A model output with auxiliary fields, like models.SplitOutput."""

    out: torch.Tensor
    aux: torch.Tensor
    denoised: torch.Tensor | None = None


class TinyNet(nn.Module):
    """A random, non-trivial DiT-signature model: forward(x, t, y) -> F with out_mult * C channels."""

    def __init__(self, channels: int = 4, num_classes: int = 10, out_mult: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * out_mult, 3, padding=1)
        self.t_proj = nn.Linear(1, channels * out_mult)
        self.y_emb = nn.Embedding(num_classes + 1, channels * out_mult)
        self.last_t: torch.Tensor | None = None

    def forward(self, x, t, y=None, **kwargs):
        self.last_t = t
        h = self.conv(x) + self.t_proj(t[:, None].to(x.dtype))[:, :, None, None]
        if y is not None:
            h = h + self.y_emb(y)[:, :, None, None]
        h = torch.tanh(h) + 0.3
        if kwargs.get("return_tokens"):
            return _Structured(out=h, aux=torch.ones(3))
        return h


class IdealGaussianF(nn.Module):
    """The raw network F that makes EDMPrecond the exact denoiser of x0 ~ N(0, diag(sd_k^2)).

    Inverts the preconditioning: s = exp(4 c_noise), x = x_in / c_in, D* = x sd_k^2 / (sd_k^2 + s^2),
    F = (D* - c_skip x) / c_out. Exercises EDMPrecond's sigma/c_noise plumbing inside the sampler.
    """

    def __init__(self, sd_k: torch.Tensor, sigma_data: float = SD) -> None:
        super().__init__()
        self.sd_k = sd_k.view(1, -1, 1, 1).to(torch.float64)
        self.sigma_data = sigma_data

    def forward(self, x_in, c_noise, y=None):
        s = (4 * c_noise.to(torch.float64)).exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = precond_coeffs(s, self.sigma_data)
        x = x_in.to(torch.float64) / c_in
        D = x * self.sd_k**2 / (self.sd_k**2 + s**2)
        return ((D - c_skip * x) / c_out).to(torch.float32)


def gaussian_denoiser(sd_k: torch.Tensor):
    """Closed-form ideal denoiser of N(0, diag(sd_k^2)): D(x; s) = x sd^2 / (sd^2 + s^2)."""
    sd2 = (sd_k**2).view(1, -1, 1, 1).to(torch.float32)
    return lambda x, s, y=None: x * sd2 / (sd2 + s**2)


def exact_ode_x0(latents: torch.Tensor, sd_k: torch.Tensor, sigma_max: float = 80.0) -> torch.Tensor:
    """x(0) of the PF-ODE dx/ds = (x - D)/s for Gaussian data: x(s) = x(smax) sqrt(sd^2+s^2)/sqrt(sd^2+smax^2)."""
    sd = sd_k.view(1, -1, 1, 1).to(torch.float64)
    return latents.to(torch.float64) * sigma_max * sd / torch.sqrt(sd**2 + sigma_max**2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ----------------------------------------------------------------------------------------------
# Preconditioning (Karras et al. 2022, Table 1).


@pytest.mark.parametrize("s", SIGMAS)
def test_precond_values_match_formulas(s):
    c_skip, c_out, c_in, c_noise = precond_coeffs(torch.tensor(s, dtype=torch.float64), SD)
    assert c_skip.item() == pytest.approx(SD**2 / (s**2 + SD**2), rel=1e-12)
    assert c_out.item() == pytest.approx(s * SD / math.sqrt(s**2 + SD**2), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(s**2 + SD**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(s) / 4, rel=1e-12)


def test_precond_known_values_at_sigma_data():
    # At s = sd: c_skip = 1/2, c_out = sd/sqrt2, c_in = 1/(sd sqrt2).
    c_skip, c_out, c_in, c_noise = precond_coeffs(torch.tensor(SD, dtype=torch.float64), SD)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(SD / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (SD * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(SD) / 4)


def test_precond_unit_variance_identities():
    """Table 1 / Appendix B.6: unit-variance network input and unit-variance effective target."""
    s = torch.tensor(SIGMAS, dtype=torch.float64)
    c_skip, c_out, c_in, _ = precond_coeffs(s, SD)
    # Var(c_in (x0 + s n)) = c_in^2 (sd^2 + s^2) = 1.
    torch.testing.assert_close(c_in**2 * (SD**2 + s**2), torch.ones_like(s))
    # Effective target F* = (x0 - c_skip (x0 + s n)) / c_out has
    # Var = ((1 - c_skip)^2 sd^2 + c_skip^2 s^2) / c_out^2 = 1.
    var_target = ((1 - c_skip) ** 2 * SD**2 + c_skip**2 * s**2) / c_out**2
    torch.testing.assert_close(var_target, torch.ones_like(s))
    # lambda(s) = 1 / c_out^2: the weighted loss equals the unit-variance F loss (eq. 8).
    torch.testing.assert_close(c_out**2 * loss_weight(s, SD), torch.ones_like(s))
    # c_skip = sd^2 c_in^2, c_out = s sd c_in, hence c_skip + s^2 c_in^2 = 1.
    torch.testing.assert_close(c_skip, SD**2 * c_in**2)
    torch.testing.assert_close(c_out, s * SD * c_in)
    torch.testing.assert_close(c_skip + s**2 * c_in**2, torch.ones_like(s))


def test_precond_unit_variance_monte_carlo():
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = torch.randn(n, generator=g, dtype=torch.float64) * SD
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    for s in [0.05, 0.5, 3.0, 40.0]:
        c_skip, c_out, c_in, _ = precond_coeffs(torch.tensor(s, dtype=torch.float64), SD)
        x = x0 + s * noise
        assert (c_in * x).std().item() == pytest.approx(1.0, abs=0.01)
        target = (x0 - c_skip * x) / c_out
        assert target.std().item() == pytest.approx(1.0, abs=0.01)


def test_precond_c_skip_minimises_c_out():
    """c_skip is the choice that minimises the target scale c_out (Appendix B.6, eq. 131-138)."""
    s = 1.3
    c_skip, c_out, _, _ = precond_coeffs(torch.tensor(s, dtype=torch.float64), SD)
    cs = torch.linspace(0, 1, 2001, dtype=torch.float64)
    # c_out^2 needed for unit target variance as a function of c_skip.
    c_out2 = (1 - cs) ** 2 * SD**2 + cs**2 * s**2
    assert cs[c_out2.argmin()].item() == pytest.approx(c_skip.item(), abs=1e-3)
    assert c_out2.min().sqrt().item() == pytest.approx(c_out.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# EDMPrecond.


def test_precond_identity_as_sigma_to_zero():
    torch.manual_seed(0)
    net = EDMPrecond(TinyNet(), SD)
    x = torch.randn(3, 4, 8, 8)
    y = torch.tensor([1, 2, 3])
    errs = []
    for s in [1e-1, 1e-3, 1e-5, 1e-7]:
        D = net(x, s, y)
        errs.append((D - x).abs().max().item())
    assert errs[0] > 1e-2  # the model is non-trivial
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-5


def test_precond_matches_manual_formula_and_sigma_shapes():
    torch.manual_seed(0)
    model = TinyNet()
    net = EDMPrecond(model, SD)
    B = 3
    x = torch.randn(B, 4, 8, 8)
    y = torch.tensor([0, 5, 10])
    sig = torch.tensor([0.01, 0.7, 30.0])

    D = net(x, sig, y)
    s4 = sig.view(B, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = precond_coeffs(s4, SD)
    F = model(c_in * x, c_noise.flatten(), y)
    torch.testing.assert_close(D, c_skip * x + c_out * F)
    assert model.last_t.shape == (B,)
    torch.testing.assert_close(model.last_t, sig.log() / 4)

    torch.testing.assert_close(net(x, s4, y), D)  # (B, 1, 1, 1)
    # scalar / 0-d sigma broadcast to the batch, equal to per-sample evaluation
    for k in range(B):
        torch.testing.assert_close(net(x, float(sig[k]), y)[k], D[k])
        torch.testing.assert_close(net(x, sig[k], y)[k], D[k])
        assert model.last_t.shape == (B,)
    with pytest.raises(ValueError):
        net(x, torch.ones(2), y)


def test_precond_slices_learn_sigma_channels():
    torch.manual_seed(0)
    model = TinyNet(out_mult=2)  # 2C output channels, like DiT with learn_sigma=True
    net = EDMPrecond(model, SD)
    x = torch.randn(2, 4, 8, 8)
    s = torch.tensor([0.3, 2.0])
    D = net(x, s, None)
    assert D.shape == x.shape
    c_skip, c_out, c_in, c_noise = precond_coeffs(s.view(2, 1, 1, 1), SD)
    F = model(c_in * x, c_noise.flatten(), None)[:, :4]
    torch.testing.assert_close(D, c_skip * x + c_out * F)


def test_precond_structured_output():
    """A dataclass output passes through with `.denoised` set; the raw `.out` and other fields stay."""
    torch.manual_seed(0)
    model = TinyNet()
    net = EDMPrecond(model, SD)
    x = torch.randn(2, 4, 8, 8)
    s = torch.tensor([0.3, 2.0])
    out = net(x, s, torch.tensor([1, 2]), return_tokens=True)
    assert isinstance(out, _Structured)
    torch.testing.assert_close(out.denoised, net(x, s, torch.tensor([1, 2])))
    assert not torch.equal(out.denoised, out.out)
    torch.testing.assert_close(out.aux, torch.ones(3))


def test_precond_float32_under_autocast():
    torch.manual_seed(0)
    net = EDMPrecond(TinyNet(), SD)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        D = net(x, torch.tensor([0.01, 1.0]), None)
    assert D.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# Training pieces.


def test_sample_sigma_lognormal_statistics():
    g = torch.Generator().manual_seed(123)
    s = sample_sigma(200_000, P_mean=-1.2, P_std=1.2, generator=g)
    assert s.shape == (200_000,)
    assert (s > 0).all()
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.01)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.01)
    s2 = sample_sigma(50_000, P_mean=0.4, P_std=0.5, generator=g)
    assert s2.log().mean().item() == pytest.approx(0.4, abs=0.01)
    assert s2.log().std().item() == pytest.approx(0.5, abs=0.01)
    # reproducible with the same generator seed
    torch.testing.assert_close(
        sample_sigma(8, generator=torch.Generator().manual_seed(1)),
        sample_sigma(8, generator=torch.Generator().manual_seed(1)),
    )


@pytest.mark.parametrize("s", SIGMAS)
def test_loss_weight_formula(s):
    assert loss_weight(torch.tensor(s, dtype=torch.float64), SD).item() == pytest.approx(
        (s**2 + SD**2) / (s * SD) ** 2, rel=1e-12
    )


def test_edm_loss_per_element_and_broadcast():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8)
    D = torch.randn(3, 4, 8, 8)
    sig = torch.tensor([0.1, 1.0, 10.0])
    L = edm_loss(D, x0, sig, SD)
    assert L.shape == x0.shape
    expected = loss_weight(sig, SD).view(3, 1, 1, 1) * (D - x0) ** 2
    torch.testing.assert_close(L, expected)
    torch.testing.assert_close(edm_loss(D, x0, sig.view(3, 1, 1, 1), SD), expected)
    torch.testing.assert_close(edm_loss(D, x0, 1.0, SD), loss_weight(torch.tensor(1.0), SD) * (D - x0) ** 2)


def test_edm_loss_of_ideal_denoiser_is_about_one():
    """For x0 ~ N(0, sd^2) the ideal denoiser's error variance is s^2 sd^2 / (s^2 + sd^2) = c_out^2,
    so E[lambda (D* - x0)^2] = 1 at every s: the irreducible weighted loss is unit (Karras et al. 2022)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(100_000, 1, 1, 1, generator=g) * SD
    n = torch.randn(100_000, 1, 1, 1, generator=g)
    for s in [0.05, 0.5, 5.0]:
        x = x0 + s * n
        D = x * SD**2 / (SD**2 + s**2)
        assert edm_loss(D, x0, s, SD).mean().item() == pytest.approx(1.0, abs=0.02)


# ----------------------------------------------------------------------------------------------
# Time steps (eq. 5).


def test_sigma_steps():
    N = 18
    t = sigma_steps(N, 0.002, 80, 7)
    assert t.shape == (N + 1,)
    assert t.dtype == torch.float64
    assert t[0].item() == pytest.approx(80.0)
    assert t[N - 1].item() == pytest.approx(0.002)
    assert t[N].item() == 0.0
    assert (t[1:] < t[:-1]).all()
    i = 7
    expected = (80 ** (1 / 7) + i / (N - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert t[i].item() == pytest.approx(expected, rel=1e-12)
    t1 = sigma_steps(1)
    assert t1.tolist() == [80.0, 0.0]


# ----------------------------------------------------------------------------------------------
# Sampler on Gaussian data with the closed-form ideal denoiser.


def test_sampler_converges_to_exact_ode_solution_isotropic():
    g = torch.Generator().manual_seed(0)
    sd_k = torch.full((4,), SD)
    latents = torch.randn(8, 4, 4, 4, generator=g, dtype=torch.float64)
    net = gaussian_denoiser(sd_k)
    ref = exact_ode_x0(latents, sd_k)

    heun = {N: rel_err(edm_sampler(net, latents, num_steps=N), ref) for N in (4, 8, 16, 32)}
    euler = {N: rel_err(edm_sampler(net, latents, num_steps=N, solver="euler"), ref) for N in (8, 16, 32)}
    assert heun[4] > heun[8] > heun[16] > heun[32]
    assert euler[8] > euler[16] > euler[32]
    # With very few steps Heun overshoots the large first steps (measured: N=8 heun 0.39 vs euler
    # 0.33); from N=16 on its 2nd order wins (0.072 vs 0.17 at 16, 0.016 vs 0.088 at 32).
    for N in (16, 32):
        assert heun[N] < euler[N]
    # Heun is 2nd order: doubling N cuts the error ~4x (we ask for > 3x); Euler ~2x.
    assert heun[16] / heun[32] > 3.0
    assert 1.7 < euler[16] / euler[32] < 2.3
    assert heun[32] < 0.03  # stated tolerance: 3% of max|x(0)| at N = 32 (measured 1.6%)


def test_sampler_converges_non_isotropic_through_precond():
    """Per-dimension sd_k != sigma_data, denoiser given as an EDMPrecond-wrapped raw F."""
    g = torch.Generator().manual_seed(1)
    sd_k = torch.tensor([0.2, 0.5, 1.0, 2.0])
    latents = torch.randn(8, 4, 4, 4, generator=g)  # float32 latents -> float32 output
    net = EDMPrecond(IdealGaussianF(sd_k), SD)
    ref = exact_ode_x0(latents, sd_k)

    heun = {N: rel_err(edm_sampler(net, latents, num_steps=N), ref) for N in (8, 16, 32, 64)}
    euler = {N: rel_err(edm_sampler(net, latents, num_steps=N, solver="euler"), ref) for N in (16, 32, 64)}
    assert heun[8] > heun[16] > heun[32] > heun[64]
    for N in (16, 32, 64):
        assert heun[N] < euler[N]
    assert heun[64] < 5e-3  # stated tolerance at N = 64 (measured 2.5e-3)
    # Same answer as the closed-form denoiser called directly.
    direct = edm_sampler(gaussian_denoiser(sd_k), latents, num_steps=16)
    assert rel_err(edm_sampler(net, latents, num_steps=16), direct) < 1e-4
    assert edm_sampler(net, latents, num_steps=4).dtype == torch.float32


@pytest.mark.parametrize("solver,nfe", [("heun", 2 * 10 - 1), ("euler", 10)])
def test_sampler_nfe_and_sigma_inputs(solver, nfe):
    calls = []

    def net(x, s, y):
        calls.append((x.dtype, s.dtype, s.ndim, float(s)))
        return x * 0.25 / (0.25 + s**2)

    edm_sampler(net, torch.randn(2, 4, 4, 4), num_steps=10, solver=solver)
    assert len(calls) == nfe
    assert all(c[:3] == (torch.float32, torch.float32, 0) for c in calls)
    assert calls[0][3] == pytest.approx(80.0)
    assert min(c[3] for c in calls) == pytest.approx(0.002, rel=1e-5)  # never evaluated at s = 0


def test_sampler_rejects_unknown_solver():
    with pytest.raises(ValueError):
        edm_sampler(lambda x, s, y: x, torch.randn(1, 1, 2, 2), solver="rk4")


# ----------------------------------------------------------------------------------------------
# Per-sample seeding.


def _sample_seeds(seeds, net, **kw):
    rnd = StackedRandomGenerator("cpu", seeds)
    latents = rnd.randn([len(seeds), 4, 8, 8])
    labels = rnd.randint(10, size=[len(seeds)])
    return edm_sampler(net, latents, labels, randn_like=rnd.randn_like, **kw), labels


@pytest.mark.parametrize("S_churn", [0.0, 40.0])
def test_per_sample_seeding_independent_of_batch_split(S_churn):
    torch.manual_seed(0)
    net = EDMPrecond(TinyNet(), SD).eval()
    kw = dict(num_steps=6, S_churn=S_churn, S_min=0.05, S_max=50.0)
    seeds = [3, 14, 15, 92]
    full, labels = _sample_seeds(seeds, net, **kw)
    a, la = _sample_seeds(seeds[:2], net, **kw)
    b, lb = _sample_seeds(seeds[2:], net, **kw)
    torch.testing.assert_close(full, torch.cat([a, b]), rtol=1e-5, atol=1e-5)
    assert torch.equal(labels, torch.cat([la, lb]))
    if S_churn > 0:  # churn really injects (seeded) noise
        no_churn, _ = _sample_seeds(seeds, net, num_steps=6)
        assert (full - no_churn).abs().max() > 1e-3


def test_stacked_generator_rows_follow_seeds():
    r = StackedRandomGenerator("cpu", [7, 8])
    x = r.randn([2, 3])
    assert torch.equal(x[0], torch.randn(3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(x[1], torch.randn(3, generator=torch.Generator().manual_seed(8)))
    y = r.randn_like(torch.empty(2, 5, dtype=torch.float64))
    assert y.shape == (2, 5) and y.dtype == torch.float64
    with pytest.raises(ValueError):
        r.randn([3, 3])


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance.


class LabelDenoiser:
    """D(x; s, y) = a_y x / (1 + s^2) + b_y, recording the batch sizes it is called with."""

    def __init__(self, num_classes: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.rand(num_classes + 1, generator=g) + 0.5
        self.b = torch.randn(num_classes + 1, generator=g)
        self.batch_sizes: list[int] = []

    def __call__(self, x, s, y):
        self.batch_sizes.append(x.shape[0])
        if y is None:
            y = torch.full((x.shape[0],), len(self.a) - 1)
        s = torch.as_tensor(s, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return self.a[y].view(-1, 1, 1, 1) * x / (1 + s**2) + self.b[y].view(-1, 1, 1, 1)


def test_guided_denoiser_scale_one_is_conditional():
    net = LabelDenoiser()
    x = torch.randn(3, 4, 2, 2)
    y = torch.tensor([0, 1, 4])
    s = torch.tensor(0.7)
    torch.testing.assert_close(guided_denoiser(net, 1.0, 5)(x, s, y), net(x, s, y))
    torch.testing.assert_close(guided_denoiser(net, 1.0, None)(x, s, y), net(x, s, y))


@pytest.mark.parametrize("sigma_shape", ["scalar", "batch"])
def test_guided_denoiser_formula_and_single_forward(sigma_shape):
    net = LabelDenoiser()
    x = torch.randn(3, 4, 2, 2)
    y = torch.tensor([0, 1, 4])
    s = torch.tensor(0.7) if sigma_shape == "scalar" else torch.tensor([0.7, 0.2, 3.0])
    w = 1.5
    net.batch_sizes.clear()
    D = guided_denoiser(net, w, 5)(x, s, y)
    assert net.batch_sizes == [6]  # one forward on the concatenated cond + uncond batch
    D_c = net(x, s, y)
    D_u = net(x, s, torch.full_like(y, 5))
    torch.testing.assert_close(D, D_u + w * (D_c - D_u))


def test_guided_denoiser_requires_null_label():
    with pytest.raises(ValueError, match="null_label"):
        guided_denoiser(LabelDenoiser(), 1.5, None)
    with pytest.raises(ValueError, match="null_label"):
        edm_sampler(LabelDenoiser(), torch.randn(2, 4, 2, 2), torch.tensor([0, 1]), cfg_scale=2.0)


def test_sampler_with_cfg_uses_guided_denoiser():
    net = LabelDenoiser()
    latents = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3])
    guided = edm_sampler(net, latents, y, num_steps=5, cfg_scale=2.0, null_label=5)
    manual = edm_sampler(guided_denoiser(net, 2.0, 5), latents, y, num_steps=5)
    torch.testing.assert_close(guided, manual)
    cond = edm_sampler(net, latents, y, num_steps=5)
    assert (guided - cond).abs().max() > 1e-3
    # cfg_scale = 1 needs no null label and equals the conditional sampler
    torch.testing.assert_close(edm_sampler(net, latents, y, num_steps=5, cfg_scale=1.0), cond)


def test_guidance_interval_guides_only_inside():
    """eval.cfg_interval: guided (one doubled batch) at lo < sigma <= hi, conditional (one batch) elsewhere."""
    net = LabelDenoiser()
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([0, 1, 4])
    D = guided_denoiser(net, 2.0, 5, interval=(0.5, 2.0))
    for s, guided in ((0.3, False), (0.5, False), (1.0, True), (2.0, True), (5.0, False)):
        net.batch_sizes.clear()
        out = D(x, torch.tensor(s), y)
        assert net.batch_sizes == ([6] if guided else [3])
        D_c, D_u = net(x, torch.tensor(s), y), net(x, torch.tensor(s), torch.full_like(y, 5))
        torch.testing.assert_close(out, D_u + 2.0 * (D_c - D_u) if guided else D_c)
    # through the sampler: an interval holding no step's sigma is the conditional sampler
    latents = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    y2 = torch.tensor([0, 3])
    cond = edm_sampler(net, latents, y2, num_steps=5)
    torch.testing.assert_close(
        edm_sampler(net, latents, y2, num_steps=5, cfg_scale=2.0, null_label=5, cfg_interval=(100.0, 200.0)), cond
    )
    part = edm_sampler(net, latents, y2, num_steps=5, cfg_scale=2.0, null_label=5, cfg_interval=(0.5, 10.0))
    full = edm_sampler(net, latents, y2, num_steps=5, cfg_scale=2.0, null_label=5)
    assert (part - cond).abs().max() > 1e-3 and (part - full).abs().max() > 1e-3


def test_sampler_progress_bar_runs():
    out = edm_sampler(gaussian_denoiser(torch.full((4,), SD)), torch.randn(1, 4, 2, 2), num_steps=3, progress=True)
    assert torch.isfinite(out).all()
