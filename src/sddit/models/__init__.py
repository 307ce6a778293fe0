"""The networks: the DiT backbone (state-dict compatible with facebookresearch/DiT), the
encoder/decoder split shared by MaskDiT and SD-DiT, the DINO projection head, and `build_model`,
which turns a config into one of them."""

from .build import build_model
from .dit import DIT_SIZES, DiT, DiT_models
from .heads import DINOHead
from .layers import (
    Attention,
    DiTBlock,
    compile_blocks,
    FinalLayer,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
)
from .split import SplitDiT, SplitDiT_models, SplitOutput, count_params

__all__ = [
    "DIT_SIZES",
    "Attention",
    "DiT",
    "DiTBlock",
    "compile_blocks",
    "DiT_models",
    "FinalLayer",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "TimestepEmbedder",
    "get_2d_sincos_pos_embed",
    "modulate",
    "build_model",
    "DINOHead",
    "SplitDiT",
    "SplitDiT_models",
    "SplitOutput",
    "count_params",
]
