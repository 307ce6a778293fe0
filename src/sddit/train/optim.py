"""The optimiser: AdamW over the student's trainable parameters, fused on CUDA."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(net: nn.Module, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW, `fused=True` on CUDA. On the CPU torch's default (a Python loop over the tensors) is
    kept on purpose: the fused CPU kernel computes the same rule with other rounding, so every
    recorded CPU run (the ablation rounds pair new rows with DiT runs that reproduce to the last
    digit) would have to be rerun, and at the default run's 2 threads it was no faster beyond the
    noise (+10 +- 18 img/s of ~700: docs/benchmarks.md, "AdamW on the CPU")."""
    params = [p for p in net.parameters() if p.requires_grad]
    fused = params[0].device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
