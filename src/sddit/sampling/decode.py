"""Latent models sample SD-VAE latents; grids, FID and image files need pixels. Which VAE decodes
them, and the decoder itself.

Which VAE, in this order: the one the user names (`--vae`), the one the model records (an export's
`config.json`, or `eval.vae` of its run config), the one in the latent manifest the model was
trained on (`data.root/manifest.json`, when that folder is reachable here), then a default (DiT's
`stabilityai/sd-vae-ft-ema` for official DiT checkpoints). The scale factor follows the same order,
ending at SD's 0.18215. Decoding is `vae.decode(z / scale_factor).sample` in float32, clamped to
[-1, 1], whatever precision the network sampled in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data.latent_format import SD_SCALE_FACTOR, read_manifest
from ..errors import DataError
from ..models.vae import DEFAULT_VAE, decode_latents, load_vae, vae_downsample


def find_vae(
    manifest_root: str | None,
    vae: str | None = None,
    scale_factor: float | None = None,
    *,
    recorded_vae: str | None = None,
    recorded_scale: float | None = None,
    default: str | None = None,
    what: str = "this latent model",
) -> tuple[str, float, str]:
    """(VAE hub id or directory, scale factor, where the VAE came from); see the module docstring."""
    manifest = None
    if manifest_root:
        try:
            manifest = read_manifest(manifest_root)
        except DataError:
            manifest = None
    if vae:
        origin = "--vae"
    elif recorded_vae:
        vae, origin = recorded_vae, "recorded with the model"
    elif manifest is not None:
        vae, origin = str(manifest["vae"]), f"manifest {Path(manifest_root) / 'manifest.json'}"
    elif default:
        vae, origin = default, "DiT default"
    else:
        raise DataError(
            f"{what} is a latent model, but its latent folder {manifest_root} (manifest.json, which names the VAE) is "
            f"not reachable here: pass --vae ID_OR_DIR (eval.vae in a config), the VAE it was trained with (e.g. "
            f"{DEFAULT_VAE}), and --scale-factor if it is not {SD_SCALE_FACTOR}"
        )
    if scale_factor is None:
        scale_factor = recorded_scale or (float(manifest["scale_factor"]) if manifest is not None else SD_SCALE_FACTOR)
    return str(vae), float(scale_factor), origin


@dataclass
class LatentDecoder:
    """A loaded VAE decoder: `decoder(z)` turns latents (N, C, h, w) into images (N, 3, H, W) in [-1, 1]."""

    vae: nn.Module
    vae_id: str
    scale_factor: float
    origin: str

    def __call__(self, z: Tensor) -> Tensor:
        return decode_latents(self.vae, z, self.scale_factor)

    def image_shape(self, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        factor = vae_downsample(self.vae)
        return (3, latent_shape[1] * factor, latent_shape[2] * factor)


def load_decoder(
    vae_id: str, scale_factor: float, origin: str, device: str | torch.device, latent_channels: int
) -> LatentDecoder:
    """Load the VAE and check that it decodes what the model samples."""
    vae = load_vae(vae_id, device)
    if int(vae.config.latent_channels) != latent_channels:
        raise DataError(
            f"the VAE {vae_id} has {vae.config.latent_channels} latent channels but the model samples "
            f"{latent_channels}: pass the VAE it was trained with (--vae)"
        )
    return LatentDecoder(vae, vae_id, scale_factor, origin)


def decoder_for_config(
    cfg, device: str | torch.device, vae: str | None = None, scale_factor: float | None = None
) -> LatentDecoder | None:
    """The decoder of a run config's samples: None for pixel models, a loaded VAE for latent ones."""
    if cfg.data.dataset != "latents":
        return None
    vae_id, scale, origin = find_vae(
        cfg.data.root, vae, scale_factor, recorded_vae=cfg.eval.vae or None, what=f"the run {cfg.run_dir}"
    )
    return load_decoder(vae_id, scale, origin, device, cfg.model.in_channels)
