"""The learning-rate schedule, shared by every objective."""

from __future__ import annotations

import math

from ..config import Config


def learning_rate(cfg: Config, step: int) -> float:
    """Linear warm-up to train.lr, then constant or a cosine / linear decay to lr * lr_final at max_steps.

    The decay starts after the warm-up, or at `lr_decay_start` x max_steps if that is later: a
    constant phase then a short decay ("warm-up, stable, decay") suits runs whose length is fixed.
    """
    tc = cfg.train
    warm = tc.warmup_steps
    if warm > 0 and step < warm:
        return tc.lr * (step + 1) / warm
    if tc.lr_schedule == "constant":
        return tc.lr
    begin = max(warm, int(tc.lr_decay_start * tc.max_steps))
    progress = min(1.0, max(0.0, (step - begin) / max(1, tc.max_steps - begin)))
    final = tc.lr * tc.lr_final
    if tc.lr_schedule == "cosine":
        return final + (tc.lr - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return tc.lr - (tc.lr - final) * progress
