"""Training objectives: what one step asks of the network and how it scores it. The backbone, EDM
preconditioning, sampler and training loop are shared; `objective: dit | maskdit | sddit` picks one.

- `DiTObjective`     the plain EDM loss on every pixel (Peebles & Xie's DiT under EDM).
- `MaskDiTObjective` 50% of tokens dropped before the encoder; EDM loss on visible patches plus
                     0.1 x an MAE loss on masked patches (Zheng et al.).
- `SDDiTObjective`   20% masking for the student; an EMA teacher encoder sees the same x0 and the
                     same noise at a small sigma (a pair on one PF-ODE trajectory); DINO/iBOT-style
                     cross-entropy between their projected tokens, plus the EDM loss on visible patches.
"""

from ..config import Config
from ..diffusion import EDMPrecond
from .base import Objective, StepNoise, Terms
from .dit import DiTObjective
from .maskdit import MaskDiTObjective
from .sddit import SDDiTObjective

OBJECTIVES: dict[str, type[Objective]] = {"dit": DiTObjective, "maskdit": MaskDiTObjective, "sddit": SDDiTObjective}


def build_objective(cfg: Config, net: EDMPrecond) -> Objective:
    return OBJECTIVES[cfg.objective](cfg, net)


__all__ = [
    "OBJECTIVES",
    "build_objective",
    "Objective",
    "StepNoise",
    "Terms",
    "DiTObjective",
    "MaskDiTObjective",
    "SDDiTObjective",
]
