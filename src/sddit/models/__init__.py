"""Model zoo: the DiT backbone (state-dict compatible with facebookresearch/DiT), the encoder/decoder
split shared by MaskDiT and SD-DiT, and the DINO projection head."""

from .dit import (
    DIT_SIZES,
    Attention,
    DiT,
    DiTBlock,
    DiT_models,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
)
from .heads import DINOHead
from .split import SplitDiT, SplitDiT_models, count_params

__all__ = [
    "DIT_SIZES", "Attention", "DiT", "DiTBlock", "DiT_models", "FinalLayer", "LabelEmbedder", "Mlp",
    "PatchEmbed", "TimestepEmbedder", "get_2d_sincos_pos_embed", "modulate",
    "DINOHead", "SplitDiT", "SplitDiT_models", "count_params",
]
