"""What `sddit generate` samples from: the sampling EMA of an sddit checkpoint, or an official
DDPM-trained DiT checkpoint behind the EDM sampler, with what sampling needs around it (shape,
classes, sampler settings, the VAE of latent models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.vae import DEFAULT_VAE
from .decode import find_vae

OFFICIAL_DIT_VAE = DEFAULT_VAE  # DiT sample_ddp.py's default --vae ema


@dataclass
class SampleSource:
    """A denoiser ready for :func:`sddit.sampling.generate`, and what it needs around it."""

    net: nn.Module
    shape: tuple[int, int, int]  # what the network samples: (C, H, W) pixels or latents
    num_classes: int
    null_label: int
    sampler_kwargs: dict[str, float]
    checkpoint: str
    kind: str  # "sddit" | "official-dit"
    latent: bool
    manifest_root: str | None = None  # the latent folder the checkpoint was trained on
    describe: dict[str, Any] = field(default_factory=dict)
    vae: str | None = None  # the VAE the model records (an export, or eval.vae of its run config)
    scale_factor: float | None = None  # the latent scale factor it records
    config: Any = None  # the run config (sddit checkpoints and releases)


def load_source(checkpoint: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> SampleSource:
    """The sampling EMA of an sddit checkpoint (file or run directory) or release (`sddit export`);
    `weights="raw"` takes a checkpoint's trained weights instead (a release holds only the EMA)."""
    from ..pretrained import is_export, load_export, load_sampling_checkpoint

    if is_export(checkpoint):
        if weights != "ema":
            raise CheckpointError(f"{checkpoint} is a release: it holds only the sampling EMA, not the raw weights")
        path = Path(checkpoint)
        cfg, net, meta = load_export(path, device)
        vae, scale = meta.get("vae"), meta.get("scale_factor")
    else:
        path, cfg, net = load_sampling_checkpoint(checkpoint, device, weights=weights)
        vae, scale = cfg.eval.vae or None, None
    m, d = cfg.model, cfg.diffusion
    latent = cfg.data.dataset == "latents"
    return SampleSource(
        net=net,
        shape=(m.in_channels, m.input_size, m.input_size),
        num_classes=m.num_classes,
        null_label=m.num_classes,
        sampler_kwargs=dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho),
        checkpoint=str(path.resolve()),
        kind="sddit",
        latent=latent,
        manifest_root=cfg.data.root if latent else None,
        describe={"objective": cfg.objective, "dataset": cfg.data.dataset},
        vae=vae,
        scale_factor=scale,
        config=cfg,
    )


def load_official_source(
    path: str | Path,
    model: str = "DiT-XL/2",
    image_size: int = 256,
    num_classes: int = 1000,
    device: str | torch.device = "cpu",
    model_kwargs: dict | None = None,
) -> SampleSource:
    """An official (DDPM-trained) DiT checkpoint as an EDM denoiser (see :mod:`sddit.diffusion.vp`)."""
    from ..diffusion.vp import DiscreteVPDenoiser, load_official_dit

    try:
        dit = load_official_dit(path, model, image_size, num_classes, model_kwargs=model_kwargs)
    except (ValueError, RuntimeError) as e:  # OfficialCheckpointNotFound is a ValueError too
        raise CheckpointError(" ".join(str(e).split())) from None
    net = DiscreteVPDenoiser(dit).to(device).eval().requires_grad_(False)
    return SampleSource(
        net=net,
        shape=(dit.in_channels, dit.input_size, dit.input_size),
        num_classes=num_classes,
        null_label=net.null_label,
        sampler_kwargs=net.sampler_kwargs(),
        checkpoint=str(Path(path).resolve()),
        kind="official-dit",
        latent=True,
        describe={"model": model, "image_size": image_size},
    )


def resolve_vae(
    source: SampleSource, vae: str | None = None, scale_factor: float | None = None
) -> tuple[str, float, str]:
    """(VAE id or directory, scale factor, where they came from) for a latent source.

    Order: ``vae``/``scale_factor`` given by the user, then what the model records, then the
    checkpoint's latent manifest, then (official DiT only) DiT's defaults (`decode.find_vae`). A
    latent sddit checkpoint with none of them is an error that says to pass ``--vae``.
    """
    return find_vae(
        source.manifest_root,
        vae,
        scale_factor,
        recorded_vae=source.vae,
        recorded_scale=source.scale_factor,
        default=OFFICIAL_DIT_VAE if source.kind == "official-dit" else None,
        what=source.checkpoint,
    )
