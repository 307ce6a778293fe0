"""The sampling EMA: an exponential moving average of the whole student, the network that samples."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..runtime import unwrap


def copy_for_ema(net: nn.Module) -> nn.Module:
    """A frozen deep copy of the student (under any DDP / compile wrapper) to average into."""
    return copy.deepcopy(unwrap(net)).eval().requires_grad_(False)


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """`decay`, or with warm-up min(decay, (1 + step) / (10 + step)), so that a short run's EMA is not
    dominated by its random initial weights."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers are copied."""
    # one call for all tensors (the same lerp as a per-tensor loop, without ~100 Python dispatches)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
