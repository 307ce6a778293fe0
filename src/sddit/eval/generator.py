"""Scoring a trained generator: FID of class-balanced samples against a fixed subset of its
dataset's reference split, with the reference statistics cached on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data import build_dataset
from ..errors import ConfigError
from ..sampling import generate, quantize
from ..seeding import reference_subset
from .inception import InceptionFeatures, find_inception_weights, load_inception
from .metrics import feature_stats, frechet_distance, load_stats, save_stats


def _cache_dir() -> Path:
    return Path(os.environ.get("SDDIT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sddit"))


def reference_stats(cfg, num: int, extractor: InceptionFeatures, weights: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Inception statistics of `num` images of the dataset's reference split (cached on disk).

    The subset is the first `num` images of a fixed permutation (seed 0) of the split, so runs and
    methods are always scored against the same real images.
    """
    split = cfg.eval.reference
    ds = build_dataset(cfg.data.dataset, cfg.data.root, split)
    num = min(num, len(ds))
    tag = f"{cfg.data.dataset}-{split}-{num}-{weights.stat().st_size}-{extractor.resize}-{extractor.precision}"
    path = _cache_dir() / f"ref-{tag}.npz"
    if path.exists():
        mu, sigma = load_stats(path)
        return mu, sigma, num
    idx = reference_subset(len(ds), num)
    mu, sigma = feature_stats(extractor(ds.images[idx]))
    save_stats(path, mu, sigma)
    return mu, sigma, num


def evaluate_generator(
    net: torch.nn.Module,
    cfg,
    num_samples: int,
    device: str | torch.device = "cpu",
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """FID of `num_samples` class-balanced samples (label k % classes, seed seed+k) vs the reference split."""
    from tqdm.auto import tqdm

    steps = cfg.eval.steps if steps is None else steps  # not `steps or ...`: 0 must not mean the default
    cfg_scale = cfg.eval.cfg_scale if cfg_scale is None else cfg_scale
    batch_size = cfg.eval.batch_size if batch_size is None else batch_size
    if steps < 1 or batch_size < 1 or num_samples < 2:
        raise ConfigError(f"FID needs steps >= 1 (got {steps}), batch size >= 1 (got {batch_size}) and at least 2 "
                          f"samples (got {num_samples})")
    weights = find_inception_weights(cfg.eval.inception or None)
    extractor = InceptionFeatures(load_inception(weights), device=device, batch_size=50, progress=True,
                                  precision=cfg.eval.inception_precision)
    t0 = time.perf_counter()
    labels = torch.arange(num_samples) % cfg.model.num_classes
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    with tqdm(total=num_samples, desc=f"sample ({steps} Heun steps)", unit="img") as bar:
        images = generate(net, labels, range(seed, seed + num_samples), shape, num_steps=steps, cfg_scale=cfg_scale,
                          null_label=cfg.model.num_classes, batch_size=batch_size, device=device, progress=bar.update,
                          precision=cfg.eval.precision)
    t1 = time.perf_counter()
    mu_r, sigma_r, num_ref = reference_stats(cfg, num_samples, extractor, weights)
    feats = extractor(quantize(images))
    fid = frechet_distance(*feature_stats(feats), mu_r, sigma_r)
    return {
        "fid": fid, "num_samples": num_samples, "num_reference": num_ref, "reference": cfg.eval.reference,
        "steps": steps, "cfg_scale": cfg_scale, "seed": seed, "sampler": "edm_heun", "precision": cfg.eval.precision,
        "inception_precision": cfg.eval.inception_precision,
        "sample_seconds": round(t1 - t0, 1), "fid_seconds": round(time.perf_counter() - t1, 1),
    }
