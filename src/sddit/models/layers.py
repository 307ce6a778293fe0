"""The building blocks of DiT (Peebles & Xie, ICCV 2023), shared by DiT and the encoder/decoder split.

The official ``models.py`` takes ``PatchEmbed``, ``Attention`` and ``Mlp`` from timm; they are
re-implemented here (parameter-free parts dropped) under the same attribute names, so the state-dict
keys are the official ones and timm is not a dependency. The fixed sin-cos position tables follow
MAE's formula, as the official DiT does.

Shape letters used in comments: B batch, C channels, H/W image size, p patch, T tokens, D width,
h heads, d = D / h head width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: per-sample affine on normalised tokens, x (B, T, D), shift/scale (B, D).

    ``1 + scale`` (not ``scale``) so that a zero-initialised modulation layer is the identity.
    """
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens, as a strided conv (timm's PatchEmbed, minus norm).

    Keeps timm's attribute name ``proj`` so the checkpoint key is ``x_embedder.proj.weight``.
    The size is fixed at construction because ``pos_embed`` is built for that grid; a different
    input size would silently mis-align positions, hence the explicit ValueError.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input is {H}x{W}, which is not divisible by patch_size {self.patch_size}")
        if H != self.img_size or W != self.img_size:
            raise ValueError(
                f"input is {H}x{W} but this model was built for {self.img_size}x{self.img_size} "
                f"(its pos_embed is fixed to that grid); build it with input_size={H}"
            )
        x = self.proj(x)  # (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, T, D), tokens in row-major (raster) order


class TimestepEmbedder(nn.Module):
    """Scalar noise level -> D-vector: sinusoidal features followed by a 2-layer MLP.

    The input may be fractional: under EDM we feed c_noise = ln(sigma) / 4, which is continuous
    and can be negative; the sinusoidal features are defined for any real t.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        # Keys t_embedder.mlp.0 / t_embedder.mlp.2 as in the official checkpoint.
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """GLIDE-style sinusoidal features of t (B,) -> (B, dim), [cos | sin] order like official.

        Frequencies are geometric from 1 down to 1/max_period; computed in float32 regardless of
        the input dtype so that the checkpoint sees the same features it was trained on.
        """
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * k / half)  # (dim/2,)
        args = t[:, None].float() * freqs[None]  # (B, dim/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*(dim/2))
        if dim % 2:  # odd dim: pad one zero column
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)  # (B, 256)
        t_freq = t_freq.to(self.mlp[0].weight.dtype)  # no-op in fp32; lets .double()/.half() work
        return self.mlp(t_freq)  # (B, D)


class LabelEmbedder(nn.Module):
    """Class label -> D-vector, with label dropout for classifier-free guidance.

    With ``dropout_prob > 0`` the table gets one extra row (index ``num_classes``) that acts as the
    learned "null" class; dropped labels are replaced by that index. The random draw uses torch's
    global CPU RNG exactly like the official code, so seeded runs drop the same labels.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace dropped labels by the null index. ``force_drop_ids == 1`` marks forced drops."""
        if force_drop_ids is None:
            # Same draw as official (CPU global RNG), then moved next to the labels.
            drop_ids = torch.rand(labels.shape[0]) < self.dropout_prob  # (B,)
        else:
            drop_ids = force_drop_ids == 1  # (B,)
        drop_ids = drop_ids.to(labels.device)
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)  # (B,)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)  # (B,)
        return self.embedding_table(labels)  # (B, D)


# ---------------------------------------------------------------------------------------------
# Transformer pieces
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout: keys attn.qkv, attn.proj).

    The fused qkv weight is laid out as [q; k; v] along the output dim, each split into heads
    contiguously, which is what the official checkpoint expects.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, T, d)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # PyTorch's CPU flash-attention backward is ~6x slower in bf16 than explicit bf16 matmuls
            # (measured on torch 2.13, AVX-512 BF16): spell the attention out, softmax in fp32.
            attn = (q @ k.transpose(-2, -1)).float().mul_(self.head_dim**-0.5).softmax(-1)  # (B, h, T, T)
            x = attn.to(q.dtype) @ v  # (B, h, T, d)
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, d), softmax(q k^T / sqrt(d)) v
        x = x.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(x)  # (B, T, D)


class Mlp(nn.Module):
    """Two-layer MLP with GELU (timm layout: keys mlp.fc1, mlp.fc2).

    ``gelu="tanh"`` is DiT's tanh approximation (what the official checkpoints were trained with);
    ``"exact"`` is the erf form, which on AVX-512 CPUs runs several times faster in bf16 (forward
    and backward; PyTorch 2.13) and differs from the approximation by < 1e-3.
    """

    def __init__(self, in_features: int, hidden_features: int, gelu: str = "tanh"):
        super().__init__()
        if gelu not in ("tanh", "exact"):
            raise ValueError(f"gelu must be 'tanh' or 'exact', got {gelu!r}")
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, D) -> (B, T, hidden) -> (B, T, D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning.

    The condition c regresses shift/scale for both LayerNorms and a gate on each residual
    branch. Zero-initialising that regression makes every block the identity at init, which is
    the reason DiT trains stably at depth.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, gelu: str = "tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), gelu)
        # Index 1 is the Linear -> key blocks.{i}.adaLN_modulation.1.* as official.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Order of the six chunks matches the official checkpoint.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=1
        )  # 6 x (B, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, D)
        return x


def compile_blocks(net: nn.Module) -> int:
    """torch.compile each DiTBlock of `net` in place (`train.compile_scope: blocks`).

    Identical blocks share one compiled graph, so the cold start compiles one block, not the whole
    model; the embedders, final layer and loss stay eager. The parameters keep their names (no
    `_orig_mod.` prefix) and copies made before (the sampling EMA, the teacher) stay eager.
    Returns the number of blocks compiled."""
    blocks = [m for m in net.modules() if isinstance(m, DiTBlock)]
    for block in blocks:
        block.compile()
    return len(blocks)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm + linear projection of each token to a p x p x C_out patch."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        x = modulate(self.norm_final(x), shift, scale)  # (B, T, D)
        return self.linear(x)  # (B, T, p*p*C_out)


# ---------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def dit_init_(model: nn.Module, blocks: Iterable[nn.Module], skip: str | None = None) -> None:
    """DiT's initialisation, shared by DiT and the encoder/decoder split, in the official order (so
    one seed gives the official initial weights). `model` has x_embedder, t_embedder, y_embedder and
    final_layer; submodules under the `skip` prefix (e.g. a head with its own init) are left alone."""
    # Every Linear: xavier-uniform weight, zero bias.
    for name, m in model.named_modules():
        if skip and (name == skip or name.startswith(skip + ".")):
            continue
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # Patch conv initialised as the Linear it is (xavier on the (D, C*p*p) view), zero bias.
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    # adaLN-Zero: each block starts as the identity ...
    for block in blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    # ... and the output is exactly zero.
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].weight)
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].bias)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)


# ---------------------------------------------------------------------------------------------
# Fixed sin-cos positional embeddings (MAE formula, as used by the official DiT)
# ---------------------------------------------------------------------------------------------


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int, cls_token: bool = False, extra_tokens: int = 0
) -> np.ndarray:
    """2-D sin-cos table for a grid_size x grid_size grid -> (grid_size**2 [+ extra_tokens], D).

    Rows are in raster order (token n = row * grid_size + col). As in MAE/DiT, the grid is built
    with meshgrid(w, h), so the first D/2 channels encode the column and the last D/2 the row.
    ``extra_tokens`` zero rows are prepended only when ``cls_token`` is true (official behaviour).
    """
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # (2, G, G): [col index, row index]
    grid = grid.reshape(2, 1, grid_size, grid_size)
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)  # (G*G, D)
    if cls_token and extra_tokens > 0:
        pos_embed = np.concatenate([np.zeros([extra_tokens, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: np.ndarray) -> np.ndarray:
    """Half the channels for grid[0], half for grid[1] -> (M, D)."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    emb_0 = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (M, D/2)
    emb_1 = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (M, D/2)
    return np.concatenate([emb_0, emb_1], axis=1)  # (M, D)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos * w_k) | cos(pos * w_k)], w_k = 10000^(-k / (D/2)), k < D/2 -> (M, D), float64."""
    if embed_dim % 2 != 0:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("m,d->md", np.asarray(pos).reshape(-1), omega)  # (M, D/2) outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)
