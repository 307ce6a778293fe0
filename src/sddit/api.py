"""The notebook API: load a trained model and sample images from it in two lines.

    import sddit
    model = sddit.load_pretrained("releases/sddit_xl2")       # a release, checkpoint or run directory
    images = model.sample([207, 360, 387], seed=0, steps=40, cfg_scale=1.5, output="uint8")  # (3, 3, 256, 256)

Sample i is drawn from seed `seed + i` alone (as `sddit generate`), so a picture can be reproduced
from its seed whatever else is in the batch, and latent models are decoded through their VAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .config import Config
from .diffusion import EDMPrecond
from .runtime import resolve_device
from .sampling import LatentDecoder, generate, load_decoder, quantize
from .sampling.sources import load_source, resolve_vae


@dataclass
class Pretrained:
    """A trained denoiser ready to sample: the sampling EMA as an EDM denoiser, its run config, and
    (latent models) the VAE that decodes its samples, loaded on first use."""

    net: EDMPrecond  # D(x, sigma, labels): the EDM denoiser; net.model is the DiT / SplitDiT
    config: Config
    source: object  # the sampling source (shape, classes, sampler settings, VAE)
    device: torch.device
    vae: str | None = None  # override of the recorded VAE (latent models)
    _decoder: LatentDecoder | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def latent(self) -> bool:
        return self.source.latent

    def decoder(self) -> LatentDecoder | None:
        """The VAE decoder of a latent model (None for pixel models), loaded once."""
        if self.latent and self._decoder is None:
            vae_id, scale, origin = resolve_vae(self.source, self.vae)
            self._decoder = load_decoder(vae_id, scale, origin, self.device, self.source.shape[0])
        return self._decoder

    @torch.no_grad()
    def sample(
        self,
        labels: int | Sequence[int] | Tensor,
        *,
        seed: int = 0,
        steps: int = 40,
        cfg_scale: float = 1.5,
        batch_size: int = 64,
        precision: str = "fp32",
        output: str = "float",
    ) -> Tensor:
        """Images of the classes `labels` (one per entry), EDM Heun with `steps` steps (NFE 2*steps-1)
        and classifier-free guidance `cfg_scale` (1 = off). `output="float"`: (N, C, H, W) float32 in
        [-1, 1]; `"uint8"`: (N, C, H, W) uint8 in 0..255 (as `sddit generate` writes them)."""
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        labels = torch.as_tensor([labels] if isinstance(labels, int) else labels, dtype=torch.long).reshape(-1)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes})")
        decoder = self.decoder()
        x = generate(
            self.net,
            labels,
            range(seed, seed + len(labels)),
            self.source.shape,
            num_steps=steps,
            cfg_scale=cfg_scale,
            null_label=self.source.null_label,
            batch_size=batch_size,
            device=self.device,
            sampler_kwargs=self.source.sampler_kwargs,
            precision=precision,
            clamp=decoder is None,
        )
        images = decoder(x) if decoder is not None else x  # (N, C, H, W) in [-1, 1]
        return quantize(images) if output == "uint8" else images


def load_pretrained(path: str | Path, device: str | torch.device = "auto", vae: str | None = None) -> Pretrained:
    """A release directory (`sddit export`), checkpoint file or run directory, ready to sample.

    `device="auto"` picks CUDA, else Apple's MPS, else the CPU. `vae` overrides the VAE a latent
    model records (a hub id or a local directory, e.g. when offline).
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    source = load_source(path, device)
    return Pretrained(net=source.net, config=source.config, source=source, device=device, vae=vae)


def sample(model: Pretrained | str | Path, labels: int | Sequence[int] | Tensor, **kwargs) -> Tensor:
    """`load_pretrained(model).sample(labels, **kwargs)` for a path; `model.sample(...)` for a loaded one."""
    if not isinstance(model, Pretrained):
        model = load_pretrained(model)
    return model.sample(labels, **kwargs)
