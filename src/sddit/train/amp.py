"""The arithmetic precision of training steps (`train.precision`): fp32, bf16 autocast, or fp16
autocast with a gradient scaler.

fp16 is for GPUs without fast bf16 (V100, T4). Its range is small (max 65504), so gradients are
computed for `scale * loss` and divided by `scale` before the optimiser step (`torch.amp.GradScaler`):
a step whose scaled gradients overflow is skipped and the scale halved; after 2000 clean steps it
doubles. A skipped step must look like no step at all to the rest of the run, so `step()` says
whether the optimiser step was taken, and the trainer moves the sampling EMA, the teacher and the
centers only then. The scaler's state (scale, clean-step count) is saved in every checkpoint, so a
resumed run skips and scales exactly as the uninterrupted run would.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for the forward pass and, for fp16, the gradient scaler around backward and step."""

    def __init__(self, precision: str, device: torch.device):
        self.device_type = device.type
        self.dtype = DTYPES.get(precision)  # None = fp32
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale_(self, opt: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true size (before clipping or measuring them)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def step(self, opt: torch.optim.Optimizer) -> bool:
        """The optimiser step; False when the fp16 scaler skipped it (inf/NaN in the gradients)."""
        if self.scaler is None:
            opt.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale only shrinks after an overflow, i.e. a skipped step

    @property
    def scale(self) -> float | None:
        return None if self.scaler is None else float(self.scaler.get_scale())

    def state_dict(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
