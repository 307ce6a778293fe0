"""Tokens of an image: patchify / unpatchify, and the MAE-style masking that MaskDiT and SD-DiT use.

Token order is raster order over the patch grid, as the patch embedding produces it; a token holds
its patch as (p, q, c) (row in patch, column in patch, channel), the official DiT layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "patchify",
    "unpatchify",
    "per_patch_mean",
    "num_kept",
    "random_masking",
    "masking_from_ids_keep",
    "gather_tokens",
    "unshuffle",
]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, T, p*p*C), tokens in raster order like the patch embedding."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, T, p*p*C) -> (B, C, H, W) for a square grid of T tokens: the inverse of `patchify`."""
    h = w = int(round(x.shape[1] ** 0.5))
    if h * w != x.shape[1]:
        raise ValueError(f"unpatchify expects a square token grid, got T={x.shape[1]}")
    x = x.reshape(x.shape[0], h, w, p, p, channels)  # (B, h, w, p, p, C)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (B, C, h, p, w, p)
    return x.reshape(x.shape[0], channels, h * p, w * p)  # (B, C, H, W)


def per_patch_mean(values: torch.Tensor, p: int) -> torch.Tensor:
    """Average a per-element quantity (B, C, H, W) within each patch -> (B, T)."""
    return F.avg_pool2d(values.mean(dim=1, keepdim=True), p).flatten(1)


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens: ``round(T * (1 - ratio))``, the same for every sample."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, min(num_tokens, int(round(num_tokens * (1.0 - mask_ratio)))))


def random_masking(
    x_or_num_tokens: torch.Tensor | int,
    mask_ratio: float,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample uniform random masking by argsort of uniform noise (MAE).

    Args:
        x_or_num_tokens: a token tensor (B, T, ...) (batch size and device are then taken from it)
            or the number of tokens T.
        mask_ratio: fraction of tokens to mask, in [0, 1).
        batch_size, device: required when an int is given.
        generator: optional RNG (must live on ``device``) for reproducible masks.

    Returns:
        ids_keep (B, T_keep) long: indices of the visible tokens, in shuffled order.
        ids_restore (B, T) long: ``gather(cat([kept, masked]), ids_restore)`` puts every token back.
        mask (B, T) float: 1 = masked, 0 = visible, in the original token order.
    """
    if isinstance(x_or_num_tokens, torch.Tensor):
        batch_size, num_tokens = x_or_num_tokens.shape[:2]
        device = x_or_num_tokens.device
    else:
        num_tokens = int(x_or_num_tokens)
        if batch_size is None:
            raise ValueError("batch_size is required when the number of tokens is given")
    t_keep = num_kept(num_tokens, mask_ratio)
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)  # (B, T)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, T): ascending noise -> kept first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, T): inverse permutation
    ids_keep = ids_shuffle[:, :t_keep]  # (B, T_keep)
    mask = torch.ones(batch_size, num_tokens, device=device)  # (B, T)
    mask[:, :t_keep] = 0  # shuffled order: the first T_keep are visible
    mask = torch.gather(mask, 1, ids_restore)  # (B, T): back to token order
    return ids_keep, ids_restore, mask


def masking_from_ids_keep(ids_keep: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rebuild ``(ids_restore, mask)`` for caller-supplied visible indices ``ids_keep`` (B, T_keep).

    The implied shuffle is ``[ids_keep..., masked tokens in increasing index order]``, which is all
    :func:`unshuffle` needs. Rows of ``ids_keep`` must hold distinct indices in [0, T).
    """
    b, t_keep = ids_keep.shape
    key = torch.full((b, num_tokens), float(t_keep), device=ids_keep.device)  # (B, T)
    key.scatter_(1, ids_keep, torch.arange(t_keep, device=ids_keep.device, dtype=key.dtype).expand(b, -1))
    ids_shuffle = torch.argsort(key, dim=1, stable=True)  # (B, T): kept (in given order), then rest
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, T)
    mask = torch.ones(b, num_tokens, device=ids_keep.device)  # (B, T)
    mask.scatter_(1, ids_keep, 0.0)
    return ids_restore, mask


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens per sample: x (B, T, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def select_patch_tokens(x: torch.Tensor, n_img: int, ids: torch.Tensor | None) -> torch.Tensor:
    """x (B, n_img + T, D) -> (B, n_img + K, D): the leading image-level token(s) (computed from every
    patch, so kept as they are) and the patch tokens at ids (B, K); all of x when ids is None."""
    if ids is None:
        return x
    return torch.cat([x[:, :n_img], gather_tokens(x[:, n_img:], ids)], dim=1)


def unshuffle(
    x_visible: torch.Tensor, ids_restore: torch.Tensor, fill: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Put visible tokens back to their positions and fill the masked ones.

    Args:
        x_visible: (B, T_keep, D) tokens in the order of ``ids_keep``.
        ids_restore: (B, T) from :func:`random_masking` / :func:`masking_from_ids_keep`.
        fill: value of the masked positions: a tensor broadcastable to (B, T - T_keep, D)
            (e.g. a learned mask token (1, 1, D)), a float, or None (zeros).

    Returns:
        (B, T, D) tokens in the original order.
    """
    b, t_keep, d = x_visible.shape
    t = ids_restore.shape[1]
    if fill is None or not isinstance(fill, torch.Tensor):
        filler = x_visible.new_full((b, t - t_keep, d), 0.0 if fill is None else float(fill))
    else:
        filler = fill.to(x_visible.dtype).expand(b, t - t_keep, d)  # (B, T - T_keep, D)
    x = torch.cat([x_visible, filler], dim=1)  # (B, T, D), shuffled order
    return gather_tokens(x, ids_restore)  # (B, T, D), token order
