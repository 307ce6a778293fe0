"""Loading a trained model for sampling: the sampling EMA of a checkpoint as an EDM denoiser."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import open_checkpoint
from .config import Config, config_from_dict
from .diffusion import EDMPrecond
from .errors import CheckpointError, ConfigError
from .models import build_model


def load_sampling_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                             warn=print) -> tuple[Path, Config, EDMPrecond]:
    """(checkpoint file, config, sampling-EMA denoiser) of a checkpoint file or run directory (its
    newest readable checkpoint). Loading runs no code from the file (weights-only unpickling)."""
    ckpt, state = open_checkpoint(path, map_location="cpu", warn=warn)
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{ckpt} is not an sddit checkpoint (its 'config' is not a dict)")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: the config stored in it is not valid here ({e})") from None
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    try:
        net.model.load_state_dict(state["ema"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{ckpt}: weights do not match the config stored with them "
                              f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return ckpt, cfg, net.to(device).eval().requires_grad_(False)


def load_sampling_net(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, EDMPrecond]:
    """The sampling-EMA denoiser of a checkpoint file or run directory (student encoder + decoder;
    no teacher, no head use), in eval mode without gradients."""
    _, cfg, net = load_sampling_checkpoint(path, device)
    return cfg, net
