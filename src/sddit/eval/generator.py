"""Scoring a trained generator: FID of class-balanced samples against a fixed subset of its
dataset's reference split, or against a reference given as a path (`train.fid_ref`: an image
folder, an ADM `.npz` batch or a statistics file), with the reference statistics cached on disk.
Latent models are decoded through their VAE (`sampling.decode`) before the Inception network."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data import build_dataset
from ..diffusion import EDM_CHURN_RANGE
from ..errors import ConfigError
from ..sampling import decoder_for_config, generate, quantize
from ..seeding import reference_subset
from . import shipped
from .files import reference_statistics
from .inception import InceptionFeatures, find_inception_weights, load_inception, run_batch_size
from .metrics import feature_stats, frechet_distance, load_stats, save_stats

LATENT_REF_HINT = (
    "set train.fid_ref=PATH (an image folder, an ADM .npz batch such as "
    "VIRTUAL_imagenet256_labeled.npz, or a statistics .npz with mu/sigma)"
)


def check_reference(cfg, ref: str | None = None) -> None:
    """Fail before any work (training, sampling) when FID would have no reference: latent models
    need a path, and a given path must exist."""
    ref = ref or cfg.train.fid_ref
    if ref:
        if not Path(ref).expanduser().exists():
            raise ConfigError(f"FID reference {ref} does not exist: {LATENT_REF_HINT}")
    elif cfg.data.dataset == "latents":
        raise ConfigError(
            f"FID of a latent model needs real images to compare with: {LATENT_REF_HINT}, or pass "
            "--ref PATH to sddit eval"
        )


def inception_extractor(cfg, weights: Path, device: str | torch.device) -> InceptionFeatures:
    """The Inception feature extractor of a run's FID (eval.inception_precision)."""
    return InceptionFeatures(
        load_inception(weights),
        device=device,
        batch_size=run_batch_size(device),
        progress=False,
        precision=cfg.eval.inception_precision,
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("SDDIT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sddit"))


def image_size(cfg, decode=None) -> int:
    """The side of the images a run's samples become (decoded through the VAE for latent models):
    the size a reference folder is centre-cropped to."""
    if decode is not None:
        return decode.image_shape((cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size))[1]
    return cfg.model.input_size


def reference_stats(
    cfg, num: int, extractor: InceptionFeatures, weights: Path, ref: str | None = None, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Inception statistics of `num` images of the dataset's reference split (cached on disk), or of
    the reference at `ref` / `train.fid_ref` (all its images, centre-cropped to `size` when they are
    a folder, or the statistics it stores).

    The subset is the first `num` images of a fixed permutation (seed 0) of the split, so runs and
    methods are always scored against the same real images.
    """
    check_reference(cfg, ref)
    if ref or cfg.train.fid_ref:
        return reference_statistics(
            ref or cfg.train.fid_ref, extractor, weights, _cache_dir(), progress=True, size=size
        )
    split = cfg.eval.reference
    ds = build_dataset(cfg.data.dataset, cfg.data.root, split, cfg.data.resolution)
    num = min(num, len(ds))
    tag = f"{cfg.data.dataset}{cfg.data.resolution or ''}-{split}-{num}-{weights.stat().st_size}-{extractor.resize}-{extractor.precision}"
    path = _cache_dir() / f"ref-{tag}.npz"
    if path.exists():
        mu, sigma = load_stats(path)
        return mu, sigma, num
    feats = shipped.load(
        shipped.path_for(cfg.data.dataset, cfg.data.resolution, split), ds.images, num, extractor, weights
    )  # the default run's reference ships with the package
    if feats is None:
        feats = extractor(ds.images[reference_subset(len(ds), num)])
    mu, sigma = feature_stats(feats)
    save_stats(path, mu, sigma)
    return mu, sigma, num


def evaluate_generator(
    net: torch.nn.Module,
    cfg,
    num_samples: int,
    device: str | torch.device = "cpu",
    steps: int | None = None,
    cfg_scale: float | None = None,
    cfg_interval: tuple[float, float] | None = None,
    churn: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    decode=None,
    ref: str | None = None,
    reference: tuple[np.ndarray, np.ndarray, int | None] | None = None,
    extractor: InceptionFeatures | None = None,
) -> dict:
    """FID of `num_samples` class-balanced samples (label k % classes, seed seed+k) vs the reference.

    The reference is `ref`, else `train.fid_ref`, else the dataset's `eval.reference` split. Latent
    models are decoded with `decode` (default: the VAE their config names, `sampling.decode`).
    Samples go through the Inception network batch by batch, so memory does not grow with N.
    `reference` / `extractor`: the reference statistics and Inception a caller loaded already (a
    training run does so before step 0, so a bad reference stops it before any training).
    """
    from tqdm.auto import tqdm

    steps = cfg.eval.steps if steps is None else steps  # not `steps or ...`: 0 must not mean the default
    cfg_scale = cfg.eval.cfg_scale if cfg_scale is None else cfg_scale
    cfg_interval = tuple(cfg.eval.cfg_interval if cfg_interval is None else cfg_interval)
    batch_size = cfg.eval.batch_size if batch_size is None else batch_size
    churn = cfg.eval.churn if churn is None else churn
    if steps < 1 or batch_size < 1 or num_samples < 2:
        raise ConfigError(
            f"FID needs steps >= 1 (got {steps}), batch size >= 1 (got {batch_size}) and at least 2 "
            f"samples (got {num_samples})"
        )
    check_reference(cfg, ref)
    weights = find_inception_weights(cfg.eval.inception or None)
    if decode is None:
        decode = decoder_for_config(cfg, device)  # None for pixel models
    if extractor is None:
        extractor = inception_extractor(cfg, weights, device)
    labels = torch.arange(num_samples) % cfg.model.num_classes
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    sampler = dict(
        sigma_min=cfg.diffusion.sigma_min,
        sigma_max=cfg.diffusion.sigma_max,
        rho=cfg.diffusion.rho,
        cfg_interval=cfg_interval,
    )
    if churn > 0:  # EDM Algorithm 2 with the paper's ImageNet-64 S_min, S_max, S_noise
        sampler.update(S_churn=churn, **EDM_CHURN_RANGE)
    feats, sample_s, feature_s = [], 0.0, 0.0
    label = f"{steps} Heun steps" + (f", S_churn {churn:g}" if churn > 0 else "")
    with tqdm(total=num_samples, desc=f"sample + inception ({label})", unit="img") as bar:
        for start in range(0, num_samples, batch_size):
            t0 = time.perf_counter()
            stop = min(num_samples, start + batch_size)
            images = generate(
                net,
                labels[start:stop],
                range(seed + start, seed + stop),
                shape,
                num_steps=steps,
                cfg_scale=cfg_scale,
                null_label=cfg.model.num_classes,
                batch_size=batch_size,
                device=device,
                precision=cfg.eval.precision,
                clamp=decode is None,
                sampler_kwargs=sampler,
            )
            if decode is not None:
                images = decode(images)  # latents -> (b, 3, H, W) in [-1, 1]
            t1 = time.perf_counter()
            feats.append(extractor(quantize(images)))
            sample_s, feature_s = sample_s + t1 - t0, feature_s + time.perf_counter() - t1
            bar.update(len(images))
    t1 = time.perf_counter()
    if reference is None:
        reference = reference_stats(cfg, num_samples, extractor, weights, ref, image_size(cfg, decode))
    mu_r, sigma_r, num_ref = reference
    fid = frechet_distance(*feature_stats(np.concatenate(feats)), mu_r, sigma_r)
    return {
        "fid": fid,
        "num_samples": num_samples,
        "num_reference": num_ref,
        "reference": str(ref or cfg.train.fid_ref or cfg.eval.reference),
        "steps": steps,
        "cfg_scale": cfg_scale,
        "cfg_interval": list(cfg_interval),
        "seed": seed,
        "sampler": "edm_stochastic" if churn > 0 else "edm_heun",
        "churn": churn,
        "precision": cfg.eval.precision,
        "inception_precision": cfg.eval.inception_precision,
        "sample_seconds": round(sample_s, 1),
        "fid_seconds": round(feature_s + time.perf_counter() - t1, 1),
    }
