"""Generating images from a trained denoiser in memory, and writing them as grids.

`generate` draws sample k from seed k alone (EDM's per-sample generators), so a set of samples is
the same whatever the batch size or the number of processes that produce it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..diffusion import StackedRandomGenerator, edm_sampler


@torch.no_grad()
def sample_seeds(
    net: nn.Module,
    seeds: list[int],
    shape: tuple[int, int, int],
    labels: Tensor | None = None,
    *,
    num_classes: int | None = None,
    num_steps: int = 40,
    cfg_scale: float = 1.0,
    null_label: int | None = None,
    device: str | torch.device = "cpu",
    solver: str = "heun",
    sampler_kwargs: dict | None = None,
    precision: str = "fp32",
) -> tuple[Tensor, Tensor]:
    """One batch, as NVlabs/edm generate.py draws it: per seed, the noise from Generator(seed), then
    (if `labels` is None) a label = randint(num_classes) from the same stream; churn continues it.

    Returns (unclamped samples (b, C, H, W) in float32 on the CPU, labels (b,) on the CPU).
    `precision="bf16"` runs the network under bf16 autocast (the sampler's own arithmetic stays
    float64, and EDMPrecond applies the preconditioning in float32).
    """
    device = torch.device(device)
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.randn((len(seeds), *shape), device=device)  # (b, C, H, W)
    if labels is None:
        labels = rnd.randint(num_classes, size=[len(seeds)], device=device)  # (b,)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        x = edm_sampler(
            net,
            latents,
            labels.to(device),
            num_steps=num_steps,
            cfg_scale=cfg_scale,
            null_label=null_label,
            solver=solver,
            randn_like=rnd.randn_like,
            **(sampler_kwargs or {}),
        )
    return x.float().cpu(), labels.cpu()


@torch.no_grad()
def generate(
    net: nn.Module,
    labels: Tensor,
    seeds: list[int] | range,
    shape: tuple[int, int, int],
    *,
    num_steps: int = 40,
    cfg_scale: float = 1.0,
    null_label: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    solver: str = "heun",
    sampler_kwargs: dict | None = None,
    progress: Callable[[int], None] | None = None,
    precision: str = "fp32",
    clamp: bool = True,
) -> Tensor:
    """Samples for (labels[k], seeds[k]) as float images in [-1, 1] (N, C, H, W) on the CPU (latents: clamp=False).

    `net(x, sigma, y)` is an EDM denoiser (e.g. the sampling-EMA `EDMPrecond`); `sampler_kwargs` go
    to `edm_sampler` (sigma_min/max, rho, churn). `progress(n)` is called after each batch. See
    `sample_seeds` for `precision`.
    """
    seeds = list(seeds)
    if len(seeds) != len(labels):
        raise ValueError(f"{len(seeds)} seeds for {len(labels)} labels")
    net.eval()
    out = []
    for start in range(0, len(seeds), batch_size):
        batch_seeds = seeds[start : start + batch_size]
        x, _ = sample_seeds(
            net,
            batch_seeds,
            shape,
            labels[start : start + batch_size],
            num_steps=num_steps,
            cfg_scale=cfg_scale,
            null_label=null_label,
            device=device,
            solver=solver,
            sampler_kwargs=sampler_kwargs,
            precision=precision,
        )
        out.append(x.clamp(-1, 1) if clamp else x)  # clamp=False for latents (std ~1, unbounded)
        if progress is not None:
            progress(len(batch_seeds))
    return torch.cat(out)


def quantize(images: Tensor) -> Tensor:
    """[-1, 1] float (N, C, H, W) -> uint8 (N, C, H, W), as EDM's generate.py: x*127.5+128, clip, floor."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def save_grid(images: Tensor, nrow: int, path: str | Path, scale: int = 1, pad: int = 2) -> Path:
    """Tile images (N, C, H, W) in [-1, 1] into rows of `nrow` and write a PNG (scaled by `scale`)."""
    arr = quantize(images).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    n, h, w, c = arr.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = arr[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def grid_classes(num_classes: int, shown: int) -> list[int]:
    """`shown` classes spread evenly over 0..num_classes-1 (all of them when there are not more)."""
    shown = min(shown, num_classes)
    return [i * num_classes // shown for i in range(shown)]


def class_grid(
    net: nn.Module,
    num_classes: int,
    per_class: int,
    shape: tuple[int, int, int],
    path: str | Path,
    *,
    seed: int = 0,
    num_steps: int = 40,
    cfg_scale: float = 1.0,
    device: str | torch.device = "cpu",
    classes: list[int] | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    **kwargs,
) -> Path:
    """One row per class (all, or `classes`), `per_class` samples each, seeds seed, seed+1, ... in
    row-major order. `decode` turns latent samples into images in [-1, 1] (`decode.LatentDecoder`)."""
    rows = list(range(num_classes)) if classes is None else list(classes)
    labels = torch.tensor(rows, dtype=torch.long).repeat_interleave(per_class)
    seeds = range(seed, seed + len(labels))
    images = generate(
        net,
        labels,
        seeds,
        shape,
        num_steps=num_steps,
        cfg_scale=cfg_scale,
        null_label=num_classes,
        device=device,
        clamp=decode is None,
        **kwargs,
    )
    if decode is not None:
        images = decode(images)  # (N, 3, H, W) in [-1, 1]
    scale = max(1, 64 // images.shape[-1])
    return save_grid(images, per_class, path, scale=scale)
