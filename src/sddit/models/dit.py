"""DiT backbone (Peebles & Xie, ICCV 2023), state-dict compatible with facebookresearch/DiT.

Why this file exists: DiT is a baseline of its own, so it has to load the official checkpoints with
``strict=True`` and reproduce their outputs. Its pieces (``layers.py``) are shared with the
encoder/decoder split of MaskDiT and SD-DiT (``split.py``).

Official key layout (what ``DiT.state_dict()`` holds), for depth ``L``:

    pos_embed                                   (1, T, D)   fixed sin-cos, not trained
    x_embedder.proj.{weight,bias}               (D, C, p, p), (D,)
    t_embedder.mlp.{0,2}.{weight,bias}          (D, 256), (D, D)
    y_embedder.embedding_table.weight           (num_classes + 1, D)
    blocks.{0..L-1}.attn.qkv.{weight,bias}      (3D, D)
    blocks.{i}.attn.proj.{weight,bias}          (D, D)
    blocks.{i}.mlp.fc1.{weight,bias}            (4D, D)
    blocks.{i}.mlp.fc2.{weight,bias}            (D, 4D)
    blocks.{i}.adaLN_modulation.1.{weight,bias} (6D, D)
    final_layer.linear.{weight,bias}            (p*p*C_out, D)
    final_layer.adaLN_modulation.1.{weight,bias}(2D, D)

Shape letters used in comments: B batch, C channels, H/W image size, p patch, T tokens, D width,
h heads, d = D / h head width.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    dit_init_,
    get_2d_sincos_pos_embed,
)
from .tokens import unpatchify

__all__ = ["DiT", "DIT_SIZES", "DiT_models"]


class DiT(nn.Module):
    """Diffusion Transformer: patchify -> L adaLN-Zero blocks conditioned on (t, y) -> unpatchify.

    ``learn_sigma`` doubles the output channels (official checkpoints predict a variance too);
    under EDM only the first ``in_channels`` are used, but keeping the layer lets the official
    weights load unchanged.
    """

    grad_checkpointing: bool = False  # set True to trade compute for activation memory in training

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        gelu: str = "tanh",
    ):
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.input_size = input_size
        self.num_classes = num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # A Parameter (not a buffer) only so the key "pos_embed" is in the official state dict;
        # it is filled with a fixed sin-cos table and never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, gelu=gelu) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official DiT init; with the zeroed adaLN/final layers the network outputs exactly 0."""
        dit_init_(self, self.blocks)
        # Fixed 2-D sin-cos positions for the patch grid.
        pe = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], self.x_embedder.grid_size)  # (T, D)
        self.pos_embed.copy_(torch.from_numpy(pe).float().unsqueeze(0))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, p*p*C_out) -> image (B, C_out, H, W); per-token layout is (p, q, c)."""
        return unpatchify(x, self.patch_size, self.out_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) noisy input, t (B,) noise level (float ok), y (B,) labels -> (B, C_out, H, W).

        ``force_drop_ids`` (B,) (1 = null label) replaces the internal label-dropout draw; the
        training objectives draw it from a per-step generator so the run does not depend on the
        number of processes. Without it the behaviour is the official one.
        """
        x = self.x_embedder(x) + self.pos_embed  # (B, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)  # (B, D)
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, c, use_reentrant=False) if use_ckpt else block(x, c)  # (B, T, D)
        x = self.final_layer(x, c)  # (B, T, p*p*C_out)
        return self.unpatchify(x)  # (B, C_out, H, W)

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        cfg_channels: int | None = 3,
    ) -> torch.Tensor:
        """Official batched classifier-free guidance, reproduced bit-for-bit.

        Expects a batch [cond; uncond] of size 2N whose second half of ``y`` holds the null label.
        Only the first half of ``x`` is used (duplicated), and the guided result is written to
        both halves. Guidance is applied to the first ``cfg_channels`` output channels only; the
        rest (remaining eps channels and the learned-sigma channels) is passed through from the
        raw model output. ``cfg_channels=3`` is the official default -- the well-known "3 vs 4
        channels" quirk kept there for exact reproducibility of the paper's FID; ``None`` means
        all ``in_channels`` (standard CFG). Our EDM sampler does not use this method: it guides
        all channels of the denoiser output.
        """
        n = cfg_channels if cfg_channels is not None else self.in_channels
        half = x[: len(x) // 2]  # (N, C, H, W)
        combined = torch.cat([half, half], dim=0)  # (2N, C, H, W)
        out = self.forward(combined, t, y)  # (2N, C_out, H, W)
        eps, rest = out[:, :n], out[:, n:]  # (2N, n, H, W), (2N, C_out - n, H, W)
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)  # 2 x (N, n, H, W)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)  # (N, n, H, W)
        eps = torch.cat([half_eps, half_eps], dim=0)  # (2N, n, H, W)
        return torch.cat([eps, rest], dim=1)  # (2N, C_out, H, W)


# ---------------------------------------------------------------------------------------------
# Presets (names and sizes as the official DiT_models)
# ---------------------------------------------------------------------------------------------

# Reused by the MaskDiT / SD-DiT presets.
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}


# `DiT_models["DiT-XL/2"](**kwargs)` as in the official dict; keyword arguments override the preset.
DiT_models: dict[str, Callable[..., DiT]] = {
    f"DiT-{size}/{patch}": partial(DiT, patch_size=patch, **DIT_SIZES[size])
    for size in ("XL", "L", "B", "S")
    for patch in (2, 4, 8)
}
