"""What `sddit generate` samples from: the sampling EMA of an sddit checkpoint, or an official
DDPM-trained DiT checkpoint behind the EDM sampler, with what sampling needs around it (shape,
classes, sampler settings, the VAE of latent models)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, DataError
from ..models.vae import DEFAULT_VAE

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


def load_source(checkpoint: str | Path, device: str | torch.device = "cpu") -> SampleSource:
    """The sampling EMA of an sddit checkpoint (file or run directory)."""
    from ..pretrained import load_sampling_checkpoint

    path, cfg, net = load_sampling_checkpoint(checkpoint, device)
    m, d = cfg.model, cfg.diffusion
    latent = cfg.data.dataset == "latents"
    return SampleSource(
        net=net, shape=(m.in_channels, m.input_size, m.input_size), num_classes=m.num_classes,
        null_label=m.num_classes, sampler_kwargs=dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max, rho=d.rho),
        checkpoint=str(path.resolve()), kind="sddit", latent=latent,
        manifest_root=cfg.data.root if latent else None,
        describe={"objective": cfg.objective, "dataset": cfg.data.dataset},
    )


def load_official_source(path: str | Path, model: str = "DiT-XL/2", image_size: int = 256, num_classes: int = 1000,
                         device: str | torch.device = "cpu", model_kwargs: dict | None = None) -> SampleSource:
    """An official (DDPM-trained) DiT checkpoint as an EDM denoiser (see :mod:`sddit.diffusion.vp`)."""
    from ..diffusion.vp import DiscreteVPDenoiser, load_official_dit

    try:
        dit = load_official_dit(path, model, image_size, num_classes, model_kwargs=model_kwargs)
    except (ValueError, RuntimeError) as e:  # OfficialCheckpointNotFound is a ValueError too
        raise CheckpointError(" ".join(str(e).split())) from None
    net = DiscreteVPDenoiser(dit).to(device).eval().requires_grad_(False)
    return SampleSource(
        net=net, shape=(dit.in_channels, dit.input_size, dit.input_size), num_classes=num_classes,
        null_label=net.null_label, sampler_kwargs=net.sampler_kwargs(), checkpoint=str(Path(path).resolve()),
        kind="official-dit", latent=True, describe={"model": model, "image_size": image_size},
    )


def resolve_vae(source: SampleSource, vae: str | None = None,
                scale_factor: float | None = None) -> tuple[str, float, str]:
    """(VAE id or directory, scale factor, where they came from) for a latent source.

    Order: ``vae``/``scale_factor`` given by the user, then the checkpoint's latent manifest, then
    (official DiT only) DiT's defaults. A latent sddit checkpoint whose manifest is not reachable
    and no ``vae`` is an error that says to pass ``--vae``.
    """
    from ..data.latent_format import SD_SCALE_FACTOR, read_manifest

    manifest = None
    if source.manifest_root:
        try:
            manifest = read_manifest(source.manifest_root)
        except DataError:
            manifest = None
    if vae is None:
        if manifest is not None:
            vae, origin = str(manifest["vae"]), f"manifest {Path(source.manifest_root) / 'manifest.json'}"
        elif source.kind == "official-dit":
            vae, origin = OFFICIAL_DIT_VAE, "DiT default"
        else:
            raise DataError(
                f"{source.checkpoint} is a latent model, but its latent folder {source.manifest_root} (manifest.json, "
                "which names the VAE) is not reachable here: pass --vae ID_OR_DIR, the VAE it was trained with "
                f"(e.g. {OFFICIAL_DIT_VAE}), and --scale-factor if it is not {SD_SCALE_FACTOR}")
    else:
        origin = "--vae"
    if scale_factor is None:
        scale_factor = float(manifest["scale_factor"]) if manifest is not None else SD_SCALE_FACTOR
    return vae, float(scale_factor), origin
