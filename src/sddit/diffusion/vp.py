"""Sampling official DiT checkpoints (discrete-time VP / DDPM, eps-prediction) with our EDM samplers.

What the official checkpoints are
---------------------------------
``DiT-XL-2-256x256.pt`` and the checkpoints written by facebookresearch/DiT's ``train.py`` hold a
network ``eps_theta(x_t, t, y)`` trained as a 1000-step DDPM: guided-diffusion's "linear" beta
schedule (``beta_t`` evenly spaced from ``1e-4`` to ``0.02``, both scaled by ``1000 / num_steps``),
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with ``abar_t = prod_{s<=t} (1 - beta_s)``, the
integer timestep ``t in [0, 999]`` as noise conditioning, and ``learn_sigma=True``: the output has
``2C`` channels, the eps prediction first and the (interpolated log-) variance after it.

The VP <-> EDM change of variables
----------------------------------
Karras et al. 2022 (Table 1, "VP" and "iDDPM" columns; NVlabs/edm ``VPPrecond`` and
``iDDPMPrecond``) write every such model as an EDM denoiser. Dividing the DDPM state by its scale
``sqrt(abar_t)`` gives ``x = x_t / sqrt(abar_t) = x0 + sigma_t eps`` with

    sigma_t = sqrt((1 - abar_t) / abar_t),        i.e.  abar_t = 1 / (1 + sigma_t^2),

so ``x_t = x / sqrt(1 + sigma^2)`` (``c_in``), and the eps prediction turns into the denoiser
``D(x; sigma) = x - sigma eps_theta(c_in x, t(sigma), y)`` (``c_skip = 1``, ``c_out = -sigma``).
The network knows only the 1000 discrete levels ``sigma_0 < ... < sigma_999`` (about 0.0100 to
157.4 for the linear schedule), so a continuous ``sigma`` is first *rounded* to one of them.

Rounding rule (:meth:`DiscreteVPDenoiser.round_sigma`): by default the nearest discrete sigma in
**log space** (``rounding="log"``), which treats the relative gaps that matter at low noise
fairly; ``rounding="linear"`` is NVlabs/edm's ``iDDPMPrecond.round_sigma`` rule (nearest in
absolute value). The two differ only at the midpoint between neighbours.

Consistent use of the rounded sigma: EDM's sampler rounds its time steps (``net.round_sigma``)
*before* calling ``iDDPMPrecond``, so ``c_in``, the timestep and ``c_out`` all see the same
discrete sigma. Our :func:`sddit.diffusion.edm_sampler` does not round its steps, so
:class:`DiscreteVPDenoiser` rounds internally and uses the rounded ``sigma_r`` for all three:
``D = x - sigma_r eps_theta(x / sqrt(1 + sigma_r^2), t_r, y)``. The only remaining difference from
NVlabs/edm's iDDPM sampling is that the ODE step ``d = (x - D) / sigma`` of our sampler uses the
unrounded ``sigma`` of the step. With 1000 levels, rounding moves sigma by < 1% above
``sigma ~ 0.16`` and by up to ~20% (half a level) near ``sigma_min`` where the levels are sparse;
on a Gaussian toy model with 40 Heun steps the samples move by < 2% of the data std versus the
exact continuous denoiser (see ``tests/test_vp.py``).

When to use this, and how it differs from DiT's own sampler
-----------------------------------------------------------
Use :func:`load_official_dit` + :class:`DiscreteVPDenoiser` to evaluate an official (DDPM-trained)
DiT checkpoint under *exactly our protocol*: the same EDM Heun sampler (Karras et al. 2022,
Algorithm 1/2), step count, ``rho`` time discretisation, per-seed noise, classifier-free guidance
on the denoiser and FID pipeline that we use for our EDM-trained DiT / MaskDiT / SD-DiT. This
isolates the training recipe from the sampler.

It is *not* a reproduction of the numbers in the DiT paper. DiT's ``sample.py`` uses the
guided-diffusion ancestral DDPM sampler respaced to 250 steps (``space_timesteps(1000, "250")``),
stochastic, with the learned variance ``Sigma_theta`` (the second half of the output channels,
which we ignore) and ``clip_denoised=False``; 250 network evaluations per sample (500 with CFG).
Here the probability-flow ODE (or EDM's churned SDE) is integrated with ``~2N`` evaluations on
EDM's ``rho = 7`` grid between the schedule's ``sigma_min`` and ``sigma_max``.

Guidance. :func:`sddit.diffusion.guided_denoiser` guides ALL latent channels of ``D`` (which is the
same as guiding eps on all channels, as ``D`` is affine in eps with the same ``x``). The official
DiT ``forward_with_cfg`` guides only the first 3 of the 4 eps channels (an artefact of its code
that the paper's FIDs include); :meth:`sddit.models.DiT.forward_with_cfg` reproduces that quirk
(``cfg_channels=3``) if it is needed for a faithful comparison with DiT's own sampler.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.dit import DIT_SIZES, DiT, DiT_models
from .edm import as_batch_sigma

__all__ = [
    "ddpm_alphas_cumprod",
    "vp_sigmas",
    "DiscreteVPDenoiser",
    "OfficialCheckpointNotFound",
    "load_official_dit",
    "official_state_dict",
    "infer_dit_config",
]


# ----------------------------------------------------------------------------------------------
# The DDPM schedule and its EDM sigmas.


def ddpm_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``, ``t = 0..num_steps-1``, float64 (decreasing).

    ``beta_t`` is guided-diffusion's "linear" schedule: ``num_steps`` values evenly spaced from
    ``beta_start`` to ``beta_end``, both multiplied by ``1000 / num_steps`` (so the defaults give
    DiT's ``1e-4 .. 0.02`` for 1000 steps and a schedule of the same total noise for other step
    counts).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    scale = 1000.0 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    if not (0 < float(betas.min()) and float(betas.max()) < 1):
        raise ValueError(f"betas must lie in (0, 1), got [{float(betas.min())}, {float(betas.max())}]")
    return torch.cumprod(1.0 - betas, dim=0)


def vp_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """EDM noise levels of the DDPM states: ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (float64)."""
    abar = alphas_cumprod.to(torch.float64)
    return ((1.0 - abar) / abar).sqrt()


# ----------------------------------------------------------------------------------------------
# The denoiser wrapper.


def _batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` (float, 0-d, ``(B,)`` or ``(B, 1, ..., 1)``) -> float64 ``(B,)`` on ``x.device``."""
    return as_batch_sigma(sigma, x, torch.float64).flatten()


class DiscreteVPDenoiser(nn.Module):
    """An eps-prediction DDPM network ``model(x_t, t, y)`` as an EDM denoiser ``D(x; sigma, y)``.

    ``D(x; sigma) = x - sigma_r * eps``, ``eps = model(x / sqrt(1 + sigma_r^2), t_r, y)[:, :C]``,
    where ``sigma_r = round_sigma(sigma)`` is the nearest of the schedule's discrete levels and
    ``t_r`` its integer timestep (see the module docstring for the rounding rule and why the
    rounded value is used everywhere). Channels of the output beyond the input's ``C`` (DiT's
    learned variance) are ignored.

    Attributes:
        sigmas: the ``num_steps`` discrete levels, ascending, float64 (``sigmas[t]`` belongs to
            timestep ``t``; a non-persistent buffer that follows ``.to(device)``).
        sigma_min, sigma_max: ``sigmas[0]`` and ``sigmas[-1]`` as Python floats, to pass to
            :func:`sddit.diffusion.edm_sampler` (or use :meth:`sampler_kwargs`).
        num_classes, null_label: the wrapped model's ``num_classes`` (``None`` if it has none);
            DiT's null (unconditional) label is ``num_classes``, as our ``guided_denoiser`` expects.

    Example::

        net = DiscreteVPDenoiser(load_official_dit("DiT-XL-2-256x256.pt"))
        x = generate(net, labels, seeds, (4, 32, 32), num_steps=40, cfg_scale=1.5,
                     null_label=net.null_label, sampler_kwargs=net.sampler_kwargs())
    """

    def __init__(
        self,
        model: nn.Module,
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        rounding: str = "log",
    ) -> None:
        super().__init__()
        if rounding not in ("log", "linear"):
            raise ValueError(f"rounding must be 'log' or 'linear', got {rounding!r}")
        self.model = model
        self.rounding = rounding
        self.num_steps = int(num_steps)
        sigmas = vp_sigmas(ddpm_alphas_cumprod(num_steps, beta_start, beta_end))  # ascending in t
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])
        num_classes = getattr(model, "num_classes", None)
        self.num_classes = None if num_classes is None else int(num_classes)

    @property
    def null_label(self) -> int | None:
        """The label index of the unconditional embedding (DiT: ``num_classes``)."""
        return self.num_classes

    def sampler_kwargs(self, rho: float = 7.0, **extra: Any) -> dict[str, Any]:
        """``dict(sigma_min=..., sigma_max=..., rho=...)`` for ``edm_sampler`` / ``generate``."""
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=rho, **extra)

    def _table(self, device: torch.device) -> Tensor:
        return self.sigmas.to(device=device, dtype=torch.float64)

    def round_index(self, sigma: Tensor | float) -> Tensor:
        """Integer timestep (int64, same shape as ``sigma``) of the nearest discrete sigma."""
        if not isinstance(sigma, Tensor):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
        table = self._table(sigma.device)
        s = sigma.to(torch.float64).reshape(-1, 1)
        if self.rounding == "log":
            # Nearest in log space; sigma <= 0 (never used by the samplers) maps to sigmas[0].
            dist = (s.clamp_min(torch.finfo(torch.float64).tiny).log() - table.log()).abs()
        else:
            dist = (s - table).abs()  # NVlabs/edm iDDPMPrecond.round_sigma
        return dist.argmin(dim=1).reshape(sigma.shape)

    def round_sigma(self, sigma: Tensor | float, return_index: bool = False) -> Tensor:
        """The discrete sigma nearest to ``sigma`` (or its timestep with ``return_index=True``).

        Same shape as ``sigma``; floating inputs keep their dtype (Python floats give float64).
        Idempotent: a discrete sigma rounds to itself.
        """
        if not isinstance(sigma, Tensor):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
        index = self.round_index(sigma)
        if return_index:
            return index
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        return self._table(sigma.device)[index].to(dtype)

    def forward(
        self,
        x: Tensor,
        sigma: Tensor | float,
        class_labels: Tensor | None = None,
        **model_kwargs: Any,
    ) -> Tensor:
        """``D(x; sigma, y)`` in float32 (float64 if ``x`` is float64); ``sigma`` scalar or per sample."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        sigma = _batch_sigma(sigma, x)  # (B,) float64
        t = self.round_index(sigma)  # (B,) int64 timesteps
        sigma_r = self._table(x.device)[t]  # (B,) float64, the level the network is trained for
        shape = (-1, *([1] * (x.ndim - 1)))
        c_in = (1.0 / (1.0 + sigma_r**2).sqrt()).to(dtype).reshape(shape)  # sqrt(abar_t)
        out = self.model(c_in * x, t, class_labels, **model_kwargs)
        eps = out[:, : x.shape[1]].to(dtype)  # learn_sigma: drop the variance channels
        return x - sigma_r.to(dtype).reshape(shape) * eps


# ----------------------------------------------------------------------------------------------
# Loading official checkpoints.


class OfficialCheckpointNotFound(FileNotFoundError, ValueError):
    """The checkpoint path does not exist (catchable as FileNotFoundError or ValueError)."""


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers around the DiT


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def official_state_dict(obj: Any, key: str | None = None, source: str = "checkpoint") -> dict[str, Tensor]:
    """The DiT state dict inside a loaded checkpoint object.

    Accepts a raw state dict (``DiT-XL-2-256x256.pt``) or a DiT ``train.py`` checkpoint dict, whose
    ``"ema"`` entry is preferred over ``"model"`` (``key`` forces one). Wrapper prefixes
    (``module.``, ``_orig_mod.``) are stripped.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    if key is not None:
        if key not in obj:
            raise ValueError(f"{source} has no {key!r} entry (keys: {sorted(map(str, obj))[:8]})")
        sd = obj[key]
    elif _is_state_dict(obj):
        sd = obj
    elif "ema" in obj or "model" in obj:
        if "objective" in obj or "sampler" in obj:
            raise ValueError(
                f"{source} looks like an sddit (EDM-trained) checkpoint, not an official DDPM DiT; "
                "wrap it with sddit.diffusion.EDMPrecond instead"
            )
        sd = obj["ema"] if "ema" in obj else obj["model"]
    else:
        raise ValueError(
            f"{source} is a dict with keys {sorted(map(str, obj))[:8]} but neither a state dict nor "
            "an 'ema'/'model' entry: pass an official DiT checkpoint"
        )
    if not _is_state_dict(sd):
        raise ValueError(f"{source}: the selected entry is not a state dict of tensors")
    out = {}
    for k, v in sd.items():
        for prefix in _WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def infer_dit_config(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """What the shapes of a DiT state dict reveal: input_size, patch_size, in_channels,
    hidden_size, depth, num_classes, learn_sigma (``num_heads`` and ``mlp_ratio`` only partly:
    mlp_ratio from fc1, num_heads not at all). Missing keys give missing fields."""
    cfg: dict[str, Any] = {}
    w = sd.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:
        cfg["hidden_size"], cfg["in_channels"], cfg["patch_size"] = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    pe = sd.get("pos_embed")
    if pe is not None and pe.ndim == 3 and "patch_size" in cfg:
        cfg["input_size"] = int(round(math.sqrt(pe.shape[1]))) * cfg["patch_size"]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        cfg["depth"] = max(blocks) + 1
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        cfg["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    emb = sd.get("y_embedder.embedding_table.weight")
    if emb is not None:
        cfg["num_classes"] = int(emb.shape[0]) - 1  # + 1 null-label row (class_dropout_prob > 0)
    lin = sd.get("final_layer.linear.weight")
    if lin is not None and "patch_size" in cfg and "in_channels" in cfg:
        cfg["learn_sigma"] = int(lin.shape[0]) == 2 * cfg["patch_size"] ** 2 * cfg["in_channels"]
    return cfg


_DESCRIBE = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_classes", "learn_sigma")


def _describe(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def _model_config(
    model_name: str | None, image_size: int, num_classes: int, model_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Full ``DiT(**cfg)`` kwargs: the preset (if any), then input_size/num_classes/learn_sigma,
    then ``model_kwargs``."""
    cfg: dict[str, Any] = {}
    if model_name is not None:
        m = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", model_name)
        if model_name not in DiT_models or m is None:
            raise ValueError(f"unknown model_name {model_name!r}; use one of {sorted(DiT_models)} or None")
        cfg.update(DIT_SIZES[m.group(1)], patch_size=int(m.group(2)))  # = DiT_models[model_name]
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 (SD-VAE latents), got {image_size}")
    cfg.update(input_size=image_size // 8, num_classes=num_classes, learn_sigma=True)
    cfg.update(model_kwargs or {})
    return cfg


def load_official_dit(
    path_or_state_dict: str | Path | Mapping[str, Any],
    model_name: str | None = "DiT-XL/2",
    image_size: int = 256,
    num_classes: int = 1000,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
) -> DiT:
    """Build ``DiT_models[model_name](input_size=image_size // 8, num_classes=num_classes,
    learn_sigma=True)`` and load an official checkpoint into it with ``strict=True``; eval mode.

    Args:
        path_or_state_dict: a ``.pt`` path, or an already loaded object. Either a raw state dict
            (the released ``DiT-XL-2-256x256.pt``) or a DiT ``train.py`` checkpoint, whose
            ``"ema"`` entry is used (``"model"`` if there is no ``"ema"``; ``key`` forces one).
        model_name: a ``DiT_models`` preset, or ``None`` to build ``DiT(**cfg)`` from defaults.
        model_kwargs: ``DiT`` kwargs that override the preset and the defaults (e.g. a tiny
            ``dict(input_size=8, hidden_size=64, depth=2, num_heads=4, ...)`` in tests).

    Raises one-line errors: :class:`OfficialCheckpointNotFound` (a ``FileNotFoundError`` and a
    ``ValueError``) for a missing file; ``ValueError`` for a file that is not a PyTorch checkpoint
    or holds no DiT state dict; ``RuntimeError`` when the checkpoint's shapes or keys do not match
    the requested config (naming both configs).
    """
    source = "state dict"
    obj: Any = path_or_state_dict
    if isinstance(path_or_state_dict, (str, Path)):
        path = Path(path_or_state_dict).expanduser()
        source = str(path)
        if not path.is_file():
            raise OfficialCheckpointNotFound(
                f"DiT checkpoint {path} does not exist; download DiT-XL-2-{image_size}x{image_size}.pt "
                "from the facebookresearch/DiT release or pass the right path"
            )
        try:
            # train.py checkpoints also hold an argparse.Namespace ("args").
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means "not a loadable checkpoint"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} is not a loadable PyTorch checkpoint ({first[:200]})") from None
    sd = official_state_dict(obj, key=key, source=source)

    cfg = _model_config(model_name, image_size, num_classes, model_kwargs)
    # Build on the meta device: shapes for the checks below without allocating or initialising
    # (seconds for DiT-XL/2 on a CPU); the weights are materialised only once the config matches.
    with torch.device("meta"):
        model = DiT(**cfg)
    want = model.state_dict()

    ckpt_cfg = infer_dit_config(sd)
    model_cfg = infer_dit_config(want)
    shape_bad = [k for k in sd if k in want and sd[k].shape != want[k].shape]
    if shape_bad or any(ckpt_cfg.get(k) != model_cfg.get(k) for k in _DESCRIBE if k in ckpt_cfg):
        raise RuntimeError(
            f"checkpoint is for DiT({_describe(ckpt_cfg, _DESCRIBE)}), not DiT({_describe(model_cfg, _DESCRIBE)}): "
            "pass the matching model_name / image_size / num_classes (or model_kwargs)"
        )
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise RuntimeError(
            f"{source} does not match a DiT state dict (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}): pass an official DiT checkpoint"
        )
    covered = set(want) >= {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    model = model.to_empty(device=map_location) if covered else DiT(**cfg).to(map_location)
    try:
        model.load_state_dict(sd, strict=True)  # copies every tensor, so nothing stays uninitialised
    except RuntimeError as e:  # e.g. num_heads cannot be checked from shapes; anything else left
        first = str(e).strip().splitlines()[0]
        raise RuntimeError(f"{source} does not load into DiT({_describe(cfg, tuple(cfg))}): {first}") from None
    return model.eval()
