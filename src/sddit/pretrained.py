"""Loading a trained model for sampling: the sampling EMA of a checkpoint as an EDM denoiser."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import Config, config_from_dict
from .diffusion import EDMPrecond
from .errors import CheckpointError
from .models import build_model


def load_sampling_net(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, EDMPrecond]:
    """The sampling-EMA denoiser of a checkpoint file or run directory (student encoder + decoder;
    no teacher, no head use), in eval mode without gradients."""
    state = load_checkpoint(resolve_checkpoint(path), map_location="cpu")
    cfg = config_from_dict(state["config"])
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    try:
        net.model.load_state_dict(state["ema"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the config stored with them ({str(e).splitlines()[0]})") from None
    return cfg, net.to(device).eval().requires_grad_(False)
