"""The optimiser: AdamW over the student's trainable parameters, fused where torch has a fused kernel."""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(net: nn.Module, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with `fused=True` on CUDA and on the CPU. Without it torch's CPU AdamW is a Python loop
    over the tensors (foreach kernels are GPU-only), several ops each: at the default run's size
    that loop costs a large share of a CPU step. Same update rule; other float rounding."""
    params = [p for p in net.parameters() if p.requires_grad]
    fused = params[0].device.type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
