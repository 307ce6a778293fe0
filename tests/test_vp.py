"""Official (DDPM, eps-prediction) DiT checkpoints sampled through our EDM samplers: sddit.vp."""

from __future__ import annotations

import math

import pytest
import torch

from sddit.diffusion import edm_sampler
from sddit.models.dit import DiT
from sddit.sampling import generate
from sddit.diffusion.vp import (
    DiscreteVPDenoiser,
    OfficialCheckpointNotFound,
    ddpm_alphas_cumprod,
    load_official_dit,
    vp_sigmas,
)

TINY = dict(patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4)


def _linear_betas_by_hand(n: int = 1000, b0: float = 1e-4, b1: float = 0.02) -> list[float]:
    return [b0 + i * (b1 - b0) / (n - 1) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Schedule


def test_schedule_matches_closed_form():
    abar = ddpm_alphas_cumprod()
    assert abar.dtype == torch.float64 and abar.shape == (1000,)
    assert bool((abar[1:] < abar[:-1]).all()), "abar must be strictly decreasing"

    sig = vp_sigmas(abar)
    assert bool((sig[1:] > sig[:-1]).all())
    # sigma_0 = sqrt(beta_0 / (1 - beta_0)) exactly, since abar_0 = 1 - beta_0.
    assert sig[0].item() == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
    assert sig[0].item() == pytest.approx(0.0100005, rel=1e-6)
    # sigma_999 from an independent sum of logs: log abar_T = sum log(1 - beta_t).
    log_abar_T = math.fsum(math.log1p(-b) for b in _linear_betas_by_hand())
    sigma_max = math.sqrt(math.expm1(-log_abar_T))  # sqrt((1 - abar) / abar) = sqrt(1 / abar - 1)
    assert sig[-1].item() == pytest.approx(sigma_max, rel=1e-9)
    assert 156 < sig[-1].item() < 158  # ~157.4 for DiT's 1000-step linear schedule
    # Every level, against a Python loop.
    prod, ref = 1.0, []
    for b in _linear_betas_by_hand():
        prod *= 1 - b
        ref.append(math.sqrt((1 - prod) / prod))
    assert torch.allclose(sig, torch.tensor(ref, dtype=torch.float64), rtol=1e-9)

    # guided-diffusion's scaling: 500 steps have betas x2, so about the same total noise.
    assert vp_sigmas(ddpm_alphas_cumprod(500))[-1].item() == pytest.approx(sig[-1].item(), rel=0.05)


def test_wrapper_attributes_and_round_sigma():
    net = DiscreteVPDenoiser(torch.nn.Identity())
    assert net.sigmas.shape == (1000,) and net.sigmas.dtype == torch.float64
    assert net.sigma_min == net.sigmas[0].item() and net.sigma_max == net.sigmas[-1].item()
    assert net.num_classes is None and net.null_label is None
    assert net.sampler_kwargs(rho=5) == dict(sigma_min=net.sigma_min, sigma_max=net.sigma_max, rho=5)

    probe = torch.exp(torch.linspace(math.log(1e-3), math.log(500.0), 301, dtype=torch.float64))
    for rounding in ("log", "linear"):
        net = DiscreteVPDenoiser(torch.nn.Identity(), rounding=rounding)
        r = net.round_sigma(probe)
        assert r.shape == probe.shape and r.dtype == torch.float64
        assert bool(torch.isin(r, net.sigmas).all()), "rounded values must come from the discrete set"
        assert torch.equal(net.round_sigma(r), r), "round_sigma must be idempotent"
        assert torch.equal(net.round_sigma(net.sigmas), net.sigmas)
        assert torch.equal(net.round_sigma(net.sigmas, return_index=True), torch.arange(1000))
        # float32 input stays float32 and idempotent.
        r32 = net.round_sigma(probe.float())
        assert r32.dtype == torch.float32 and torch.equal(net.round_sigma(r32), r32)
        # Out-of-range sigmas clamp to the ends; a Python float works.
        assert net.round_sigma(1e-6).item() == net.sigma_min
        assert net.round_sigma(1e4).item() == net.sigma_max
        # Nearest: between two neighbours, the rounded value is one of them and at least as close.
        idx = net.round_sigma(probe, return_index=True)
        lo, hi = net.sigmas[(idx - 1).clamp_min(0)], net.sigmas[(idx + 1).clamp_max(999)]
        d = (lambda a, b: (a.log() - b.log()).abs()) if rounding == "log" else (lambda a, b: (a - b).abs())
        assert bool((d(r, probe) <= d(lo, probe) + 1e-12).all() and (d(r, probe) <= d(hi, probe) + 1e-12).all())
    # The two rules differ between the geometric and the arithmetic midpoint of two levels.
    s0, s1 = net.sigmas[0].item(), net.sigmas[1].item()
    mid = math.sqrt(s0 * s1) * 1.01  # just above the geometric midpoint, below (s0 + s1) / 2
    assert mid < (s0 + s1) / 2
    assert DiscreteVPDenoiser(torch.nn.Identity(), rounding="log").round_sigma(mid).item() == s1
    assert DiscreteVPDenoiser(torch.nn.Identity(), rounding="linear").round_sigma(mid).item() == s0
    with pytest.raises(ValueError, match="rounding"):
        DiscreteVPDenoiser(torch.nn.Identity(), rounding="nearest")


# ---------------------------------------------------------------------------------------------
# The denoiser on an exactly solvable model


class GaussianEps(torch.nn.Module):
    """Exact DDPM eps-predictor for x0 ~ N(0, sd^2 I), as an official-DiT-like ``model(x_t, t, y)``.

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps  =>  E[eps | x_t] = sqrt(1 - abar) x_t / (abar sd^2 + 1 - abar).
    Outputs 2C channels (learned-variance junk in the second half) like learn_sigma=True.
    """

    def __init__(self, sd: float):
        super().__init__()
        self.sd = sd
        self.num_classes = 10
        self.register_buffer("abar", ddpm_alphas_cumprod())
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x_t, t, y):
        assert t.dtype == torch.int64 and t.shape == (x_t.shape[0],)
        self.seen_t.append(t)
        a = self.abar[t].to(x_t.dtype).reshape(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * x_t / (a * self.sd**2 + 1 - a)
        return torch.cat([eps, torch.full_like(eps, 1e6)], dim=1)


def test_denoiser_is_ideal_gaussian_denoiser_at_discrete_sigmas():
    torch.manual_seed(0)
    sd = 0.5
    net = DiscreteVPDenoiser(GaussianEps(sd))
    x = torch.randn(6, 2, 4, 4) * 3
    for t in (0, 1, 10, 250, 500, 998, 999):
        s = net.sigmas[t]
        for sigma in (s.item(), s.float(), s.expand(6), s.reshape(1, 1, 1, 1).expand(6, 1, 1, 1)):
            D = net(x, sigma)
            assert D.shape == x.shape and D.dtype == torch.float32
            ideal = x * sd**2 / (sd**2 + s.item() ** 2)
            assert torch.allclose(D, ideal, rtol=1e-4, atol=1e-5 * (1 + s.item())), (t, (D - ideal).abs().max())
        assert int(net.model.seen_t[-1][0]) == t
    # Per-sample sigmas in one batch hit per-sample timesteps.
    ts = torch.tensor([0, 3, 100, 400, 700, 999])
    D = net(x, net.sigmas[ts])
    assert torch.equal(net.model.seen_t[-1], ts)
    ideal = x * sd**2 / (sd**2 + net.sigmas[ts].float().reshape(-1, 1, 1, 1) ** 2)
    assert torch.allclose(D, ideal, rtol=1e-4, atol=2e-3)
    # Off-grid sigma: the rounded level is used for c_in, the timestep and c_out alike, so D is the
    # ideal denoiser at sigma_r.
    sigma = 1.2345
    s_r = net.round_sigma(sigma).item()
    assert s_r != sigma
    assert torch.allclose(net(x, sigma), x * sd**2 / (sd**2 + s_r**2), rtol=1e-4, atol=1e-5)


def test_edm_sampler_through_wrapper_recovers_data_std():
    """40 Heun steps on the wrapper's [sigma_min, sigma_max] map N(0, I) latents to std ~ sd.

    Tolerance 3%: with these latents the exact ODE gives std / sd = latents.std() (1.004 here);
    the measured deviation is ~1% (Heun truncation from sigma_max ~ 157 with rho = 7, plus the
    sigma rounding, which alone moves samples by < 1% of sd versus the exact continuous denoiser).
    """
    sd = 0.5
    net = DiscreteVPDenoiser(GaussianEps(sd))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(128, 1, 8, 8, generator=g)
    x = edm_sampler(net, latents, None, num_steps=40, sigma_min=net.sigma_min, sigma_max=net.sigma_max)
    assert x.shape == latents.shape and torch.isfinite(x).all()
    assert x.std().item() / sd == pytest.approx(latents.std().item(), rel=0.03)
    assert abs(x.mean().item()) < 0.05 * sd
    # Versus the same sampler on the exact continuous-sigma denoiser: the rounding costs < 2% of sd.
    exact = edm_sampler(lambda z, s, y: z * sd**2 / (sd**2 + s**2), latents, None, num_steps=40, **net.sampler_kwargs())
    assert (x - exact).abs().max().item() < 0.02 * sd


# ---------------------------------------------------------------------------------------------
# Official checkpoints


def _tiny_official(tmp_path):
    torch.manual_seed(0)
    model = DiT(input_size=8, num_classes=10, **TINY, learn_sigma=True)  # = image_size 64 latents
    # Give the zero-initialised output layers some weights so the forward pass is non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.02)
    sd = model.state_dict()
    raw = tmp_path / "raw.pt"
    torch.save(sd, raw)
    ema = {k: v + 0.01 if v.is_floating_point() and k != "pos_embed" else v for k, v in sd.items()}
    full = tmp_path / "train.pt"
    torch.save({"model": sd, "ema": ema, "opt": {}, "args": None}, full)
    return model, sd, ema, raw, full


def test_load_official_dit_and_sample_with_cfg(tmp_path):
    model, sd, ema, raw, full = _tiny_official(tmp_path)
    kw = dict(model_name=None, image_size=64, num_classes=10, model_kwargs=TINY)

    m_raw = load_official_dit(raw, **kw)
    assert not m_raw.training and m_raw.learn_sigma and m_raw.out_channels == 8
    for k, v in m_raw.state_dict().items():
        assert torch.equal(v, sd[k]), k
    m_ema = load_official_dit(full, **kw)  # "ema" preferred
    assert torch.equal(m_ema.final_layer.linear.weight, ema["final_layer.linear.weight"])
    m_model = load_official_dit(full, key="model", **kw)
    assert torch.equal(m_model.final_layer.linear.weight, sd["final_layer.linear.weight"])
    m_obj = load_official_dit({"model": sd}, **kw)  # an in-memory object works too
    assert torch.equal(m_obj.final_layer.linear.weight, sd["final_layer.linear.weight"])
    # A preset name plus overrides builds the same network.
    m_preset = load_official_dit(
        raw, "DiT-S/2", image_size=64, num_classes=10, model_kwargs=dict(hidden_size=64, depth=2, num_heads=4)
    )
    assert m_preset.patch_size == 2 and len(m_preset.blocks) == 2

    net = DiscreteVPDenoiser(m_ema)
    assert net.num_classes == 10 and net.null_label == 10
    labels = torch.tensor([0, 3, 9])
    x = generate(
        net,
        labels,
        [0, 1, 2],
        (4, 8, 8),
        num_steps=4,
        cfg_scale=1.5,
        null_label=net.null_label,
        sampler_kwargs=net.sampler_kwargs(),
    )
    assert x.shape == (3, 4, 8, 8) and torch.isfinite(x).all()
    # Per-seed reproducibility holds through the wrapper.
    x1 = generate(
        net,
        labels[1:2],
        [1],
        (4, 8, 8),
        num_steps=4,
        cfg_scale=1.5,
        null_label=net.null_label,
        sampler_kwargs=net.sampler_kwargs(),
    )
    assert torch.allclose(x[1:2], x1, atol=1e-5)


def test_load_official_dit_errors(tmp_path):
    _, sd, _, raw, _ = _tiny_official(tmp_path)
    kw = dict(model_name=None, image_size=64, num_classes=10, model_kwargs=TINY)

    with pytest.raises(OfficialCheckpointNotFound, match="does not exist"):
        load_official_dit(tmp_path / "nope.pt", **kw)
    with pytest.raises(ValueError):  # also a ValueError, as promised
        load_official_dit(tmp_path / "nope.pt", **kw)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable PyTorch checkpoint"):
        load_official_dit(junk, **kw)
    with pytest.raises(ValueError, match="neither a state dict"):
        load_official_dit({"foo": 1}, **kw)
    with pytest.raises(ValueError, match="EDM-trained"):
        load_official_dit({"model": sd, "ema": sd, "objective": {}}, **kw)

    # Wrong image size / width / num_classes: one line naming both configs.
    with pytest.raises(RuntimeError, match=r"checkpoint is for DiT\(input_size=8.*not DiT\(input_size=16") as e:
        load_official_dit(raw, model_name=None, image_size=128, num_classes=10, model_kwargs=TINY)
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match=r"hidden_size=64.*not DiT\(.*hidden_size=1152"):
        load_official_dit(raw, "DiT-XL/2", image_size=64, num_classes=10)
    with pytest.raises(RuntimeError, match=r"num_classes=10.*num_classes=1000"):
        load_official_dit(raw, **{**kw, "num_classes": 1000})
    with pytest.raises(RuntimeError, match=r"learn_sigma=True.*learn_sigma=False"):
        load_official_dit(raw, **{**kw, "model_kwargs": {**TINY, "learn_sigma": False}})
    with pytest.raises(ValueError, match="unknown model_name"):
        load_official_dit(raw, "DiT-XXL/2", **{k: v for k, v in kw.items() if k != "model_name"})
