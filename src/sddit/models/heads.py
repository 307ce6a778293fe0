"""Projection heads for the self-supervised discriminative loss of SD-DiT.

SD-DiT aligns the student and teacher encoders in an embedding space, DINO/iBOT style: every encoder
output token ([CLS] and patches) goes through a projection head that ends in K "prototype" logits,
and the loss is a cross-entropy between the teacher's and the student's softmax over those logits.
The head here is DINO's (Caron et al. 2021, ``vision_transformer.DINOHead``) with its defaults
(``norm_last_layer=True``, no batch norm), written against the modern parametrization API.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "ProjectorMLP"]


class DINOHead(nn.Module):
    """MLP -> L2-normalise -> weight-normalised bias-free prototype layer.

    Why each piece is there (all from DINO):

    * the MLP (``in_dim -> hidden -> ... -> bottleneck``, GELU) keeps the prototype geometry away
      from the backbone features, so the backbone is not forced to be a clustering space itself;
    * the L2 normalisation of the bottleneck puts every token on the unit sphere, so a logit is a
      cosine similarity to a prototype scaled by the prototype's norm;
    * the last layer is weight-normalised with its magnitude ``g`` fixed to 1
      (``norm_last_layer=True``): every prototype has unit norm, so logits lie in ``[-1, 1]`` and the
      temperatures alone set the sharpness. DINO reports that this stabilises training and is the
      main guard, with centering and sharpening, against collapse.

    Args:
        in_dim: width of the incoming tokens (the encoder width ``D``).
        out_dim: number of prototypes ``K`` (DINO/iBOT use 8192 for ViT-S/B patch heads).
        hidden_dim: MLP width.
        bottleneck_dim: width of the L2-normalised embedding.
        nlayers: number of Linear layers in the MLP (1 = a single ``in_dim -> bottleneck`` Linear).
        last_init: ``"trunc_normal"`` or ``"pytorch"``: the prototype directions' init (see
            :meth:`reset_parameters`).
        norm_input: apply a parameter-free LayerNorm to the input first. DINO feeds the head with
            the ViT's final-LayerNorm output; a DiT encoder has no final norm (its residual stream
            grows with depth and is modulated by adaLN), so ``SplitDiT`` turns this on. It has no
            parameters, so the state dict is the same either way.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_input: bool = False,
        last_init: str = "trunc_normal",
    ) -> None:
        super().__init__()
        if last_init not in ("trunc_normal", "pytorch"):
            raise ValueError(f"last_init must be 'trunc_normal' or 'pytorch', got {last_init!r}")
        self.last_init = last_init
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.input_norm = nn.LayerNorm(in_dim, elementwise_affine=False, eps=1e-6) if norm_input else nn.Identity()
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        # Parameters: last_layer.parametrizations.weight.original0 (g, (K, 1), frozen at 1) and
        # ...original1 (v, (K, bottleneck)); weight = g * v / ||v||_row.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), name="weight", dim=0)
        self.reset_parameters()

    @property
    def weight_g(self) -> nn.Parameter:
        """The weight-norm magnitude (DINO's ``last_layer.weight_g``), frozen at 1."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def weight_v(self) -> nn.Parameter:
        """The weight-norm direction (DINO's ``last_layer.weight_v``)."""
        return self.last_layer.parametrizations.weight.original1

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINO init: trunc-normal(0.02) MLP weights, zero biases, unit frozen magnitude.

        The prototype directions ``v`` get trunc-normal(0.02) too (``last_init="trunc_normal"``) or,
        as in DINO's code, where ``last_layer`` is built after the init pass, PyTorch's default
        Linear init (``"pytorch"``: kaiming-uniform). Weight norm makes the layer's output independent
        of ``|v|``, but not its learning: Adam moves each direction by about lr / |v|, so the smaller
        trunc-normal rows (|v| = 0.02 sqrt(bottleneck)) rotate ~3.6x faster than the default ones.
        """
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.last_init == "trunc_normal":
            nn.init.trunc_normal_(self.weight_v, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear.reset_parameters
        self.weight_g.fill_(1.0)
        self.weight_g.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> L2-normalised bottleneck (..., bottleneck_dim), in fp32.

        The normalisation is done in fp32 even under bf16 autocast: a bf16 norm of a 256-vector is
        coarse enough to perturb the sharpened teacher distribution.
        """
        x = self.mlp(self.input_norm(x))  # (..., bottleneck)
        return F.normalize(x.float(), dim=-1, p=2)  # (..., bottleneck), unit norm, fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> prototype logits (..., out_dim), each in [-1, 1] at full precision."""
        z = self.embed(x)  # (..., bottleneck)
        with torch.autocast(z.device.type, enabled=False):  # autocast would recast this Linear to bf16
            return self.last_layer(z)  # (..., K), fp32


class ProjectorMLP(nn.Module):
    """An alignment projector: REPA's ``in_dim -> hidden -> hidden -> out_dim`` MLP with SiLU
    (SRA's own ``ap_head`` is one hidden layer, 2 x in_dim wide: a [choice] here).

    It maps the student's tokens at an early block onto the teacher's raw tokens at a deeper one,
    so the backbone need not equal the teacher's features, only predict them.
    Default PyTorch Linear init: nothing here is zero-initialised, so the loss has a gradient at step 0.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim), fp32 (the loss compares it with the teacher's tokens in fp32)."""
        return self.mlp(x).float()
