"""Encoder/decoder DiT shared by MaskDiT and SD-DiT.

Both methods cut a DiT into two stacks of the same adaLN-Zero blocks:

* an **encoder** that sees only the *visible* patch tokens (masked tokens are dropped before it,
  MAE style, which is where the training speed-up comes from), optionally behind a learnable
  [CLS] token (SD-DiT's image-level token for the discriminative loss);
* a **decoder** that gets the encoder output back at full length (masked positions filled with a
  learned mask token or zeros, tokens un-shuffled to their positions, a fresh position embedding
  added) and predicts the EDM network output ``F`` for every patch.

At sampling time the same network runs on all tokens with mask ratio 0, so the decoder never sees
a mask token at inference. SD-DiT's teacher is an EMA copy of the encoder part only
(:meth:`SplitDiT.make_teacher`).

The blocks, embedders and final layer are the ones of :mod:`sddit.models.dit` (state-dict
compatible with facebookresearch/DiT) and keep DiT's module names, so the encoder part of an
official DiT checkpoint can be loaded with ``load_state_dict(..., strict=False)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .dit import DIT_SIZES
from .heads import DINOHead, ProjectorMLP
from .layers import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    dit_init_,
    get_2d_sincos_pos_embed,
)
from .tokens import gather_tokens, masking_from_ids_keep, random_masking, select_patch_tokens, unpatchify, unshuffle

__all__ = ["EncoderOutput", "SplitOutput", "SplitDiT", "SplitDiT_models", "PARTS", "count_params", "format_param_table"]


@dataclass
class EncoderOutput:
    """What the encoder hands to the decoder and to the discriminative head."""

    tokens: torch.Tensor  # (B, [1+]T_keep, D) encoder output, [CLS] first if used
    c: torch.Tensor  # (B, D) conditioning vector (timestep + label)
    head_tokens: torch.Tensor  # (B, [1+]T_keep, D) what the head reads: the output of block `head_block`
    ids_keep: torch.Tensor  # (B, T_keep) visible token indices, in the order of `tokens`
    ids_restore: torch.Tensor  # (B, T) inverse shuffle (see tokens.unshuffle)
    mask: torch.Tensor  # (B, T) float, 1 = masked, in token order
    input_tokens: torch.Tensor | None = (
        None  # (B, T, D) the embedded noisy input at every position (mask_token="input")
    )


@dataclass
class SplitOutput:
    """A training forward of the split model (``return_tokens=True``): everything the objectives read."""

    out: torch.Tensor  # (B, C_out, H, W) the raw network output F at every position
    tokens: torch.Tensor  # (B, [1+]T_keep, D) encoder tokens
    mask: torch.Tensor  # (B, T) 1 = masked
    ids_keep: torch.Tensor  # (B, T_keep)
    ids_restore: torch.Tensor  # (B, T)
    head: torch.Tensor | None = None  # (B, [1+]T_keep, K) projection-head logits (SD-DiT), fp32
    denoised: torch.Tensor | None = None  # (B, C, H, W) the EDM denoiser D, set by diffusion.EDMPrecond


# Every top-level parameter or module of a SplitDiT belongs to exactly one part (a test checks it).
# The teacher copies the encoder and the head; parameter counts are reported per part.
PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("x_embedder", "t_embedder", "y_embedder", "pos_embed", "cls_token", "cls_pos_embed", "blocks"),
    "decoder": ("decoder_embed", "decoder_cond", "mask_token", "decoder_pos_embed", "decoder_blocks", "final_layer"),
    "head": ("head",),
}


class SplitDiT(nn.Module):
    """DiT cut into an encoder (visible tokens, optional [CLS]) and a decoder (all positions).

    Args:
        input_size: latent side length (32 for ImageNet-256 SD-VAE latents).
        patch_size: patch side (2, 4 or 8).
        in_channels: latent channels.
        hidden_size, encoder_depth, num_heads: encoder width ``D``, depth, heads.
        decoder_depth, decoder_hidden_size, decoder_num_heads: decoder stack; None = encoder's.
        mlp_ratio: MLP expansion of every block.
        class_dropout_prob: label dropout for classifier-free guidance (null label = num_classes).
        num_classes: number of classes.
        learn_sigma: double the output channels (DiT's variance head; unused under EDM).
        use_cls_token: prepend a learnable [CLS] token to the encoder input (SD-DiT).
        mask_token: ``"learned"`` (MaskDiT/MAE), ``"zeros"``, or ``"input"`` (the embedded noisy
            input tokens at those positions: MaskGWM's reading of SD-DiT) for masked decoder positions.
        head_dim: number of prototypes K of a DINO head on the encoder tokens; 0 = no head.
        head_hidden_dim, head_bottleneck_dim: the head's MLP widths.
        head_norm_input: parameter-free LayerNorm before the head ([choice], see DINOHead).
        head_block: the encoder block (1-based) whose output tokens the head reads; 0 = the last.
            An earlier block aligns intermediate features (REPA aligns about a third of the way
            in) and leaves the last encoder blocks to the generative loss alone.
        head_last_init: the head's prototype-layer init (``DINOHead``'s ``last_init``).
        head_pool: put the mean of the patch tokens in front of what the head reads, as an
            image-level token (in place of a [CLS] token, which starts as one vector for all images).
        head_type: ``"dino"`` (a DINO head with ``head_dim`` prototypes) or ``"mlp"`` (SRA's
            projector onto the encoder width, ``head_hidden_dim`` wide).
        gelu: the blocks' GELU, ``"tanh"`` (DiT's) or ``"exact"`` (faster on CPUs; see ``layers.Mlp``).
    """

    grad_checkpointing: bool = False  # as DiT: set True to trade compute for activation memory

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        encoder_depth: int = 26,
        decoder_depth: int = 2,
        decoder_hidden_size: int | None = None,
        num_heads: int = 16,
        decoder_num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        gelu: str = "tanh",
        use_cls_token: bool = True,
        mask_token: str = "learned",
        head_dim: int = 0,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_norm_input: bool = True,
        head_block: int = 0,
        head_last_init: str = "trunc_normal",
        head_pool: bool = False,
        head_type: str = "dino",
    ) -> None:
        super().__init__()
        if mask_token not in ("learned", "zeros", "input"):
            raise ValueError(f"mask_token must be 'learned', 'zeros' or 'input', got {mask_token!r}")
        if head_type not in ("dino", "mlp"):
            raise ValueError(f"head_type must be 'dino' or 'mlp', got {head_type!r}")
        if head_pool and use_cls_token:
            raise ValueError("head_pool and use_cls_token both make an image-level token; choose one")
        if not 0 <= head_block <= encoder_depth:
            raise ValueError(f"head_block {head_block} must be in 1..{encoder_depth} (or 0 = the last encoder block)")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        dec_width = hidden_size if decoder_hidden_size is None else decoder_hidden_size
        dec_heads = num_heads if decoder_num_heads is None else decoder_num_heads

        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.hidden_size, self.decoder_hidden_size = hidden_size, dec_width
        self.num_heads, self.decoder_num_heads = num_heads, dec_heads
        self.encoder_depth, self.decoder_depth = encoder_depth, decoder_depth
        self.use_cls_token = use_cls_token
        self.mask_token_mode = mask_token
        self.head_dim = head_dim
        self.head_block = head_block or encoder_depth  # 1-based: the head reads the output of this block
        self.head_pool = head_pool
        self.grid_size = input_size // patch_size
        self.num_patches = self.grid_size**2
        self.is_teacher = False

        # ---- encoder (names as in DiT) ----
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed sin-cos embedding of the patch tokens; a non-trainable Parameter as in DiT so the
        # checkpoint layout matches.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, hidden_size), requires_grad=False)
        if use_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
            # [choice] The patch grid's sin-cos table has no slot for [CLS]; give it its own learnable
            # position (zero init, so at init it is just cls_token).
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, hidden_size))
        else:
            self.cls_token = None
            self.cls_pos_embed = None
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, gelu=gelu) for _ in range(encoder_depth)]
        )

        # ---- decoder ----
        widths_differ = dec_width != hidden_size
        self.decoder_embed = nn.Linear(hidden_size, dec_width) if widths_differ else nn.Identity()
        # [choice] The decoder blocks are conditioned on the same t+y vector, projected to their width.
        self.decoder_cond = nn.Linear(hidden_size, dec_width) if widths_differ else nn.Identity()
        if mask_token == "learned":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        else:
            self.mask_token = None
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dec_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [DiTBlock(dec_width, dec_heads, mlp_ratio=mlp_ratio, gelu=gelu) for _ in range(decoder_depth)]
        )
        self.final_layer = FinalLayer(dec_width, patch_size, self.out_channels)

        # ---- discriminative head (SD-DiT) on encoder tokens ----
        if head_dim > 0 and head_type == "mlp":
            self.head = ProjectorMLP(hidden_size, head_hidden_dim, hidden_size)
        elif head_dim > 0:
            self.head = DINOHead(
                hidden_size,
                out_dim=head_dim,
                hidden_dim=head_hidden_dim,
                bottleneck_dim=head_bottleneck_dim,
                norm_input=head_norm_input,
                last_init=head_last_init,
            )
        else:
            self.head = None

        self.initialize_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's init, extended to the new parts.

        * every Linear: xavier-uniform weight, zero bias (DiT's ``_basic_init``); patch conv as a
          Linear; label table and timestep MLP normal(0.02);
        * adaLN-Zero: each block's modulation output zeroed, so every block starts as the identity;
        * final layer (modulation and projection) zeroed, so ``F`` is exactly 0 at init;
        * [CLS] and the learned mask token normal(0.02) (ViT/MAE), CLS position zeros;
        * the head keeps DINO's own init (trunc-normal 0.02, unit frozen magnitude).
        """
        dit_init_(self, [*self.blocks, *self.decoder_blocks], skip="head")
        pe = get_2d_sincos_pos_embed(self.hidden_size, self.grid_size)
        self.pos_embed.copy_(torch.as_tensor(pe, dtype=torch.float32).unsqueeze(0))
        dpe = get_2d_sincos_pos_embed(self.decoder_hidden_size, self.grid_size)
        self.decoder_pos_embed.copy_(torch.as_tensor(dpe, dtype=torch.float32).unsqueeze(0))

        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
            nn.init.zeros_(self.cls_pos_embed)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        if self.head is not None:
            self.head.reset_parameters()

    # ------------------------------------------------------------------ pieces
    def embed(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with position embedding and the conditioning vector.

        Label dropout (classifier-free guidance training) happens here when ``self.training``;
        ``force_drop_ids`` (B,) overrides it (1 = use the null label), e.g. to give a teacher and a
        student the same dropped labels.

        Returns: tokens (B, T, D), c (B, D).
        """
        tokens = self.x_embedder(x) + self.pos_embed  # (B, T, D)
        t_emb = self.t_embedder(t)  # (B, D)
        y_emb = self.y_embedder(y, self.training, force_drop_ids)  # (B, D)
        return tokens, t_emb + y_emb  # (B, T, D), (B, D)

    def encode(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        mask_ratio: float = 0.0,
        ids_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        force_drop_ids: torch.Tensor | None = None,
        stop_after_head_block: bool = False,
    ) -> EncoderOutput:
        """Run the encoder on [CLS] + the visible tokens.

        Masked tokens are dropped *before* the encoder (MAE style). ``ids_keep`` (B, T_keep)
        overrides the random mask (``mask_ratio`` is then ignored). With ratio 0 and no ids_keep no
        gather is done and token order is the identity. ``stop_after_head_block`` skips the blocks
        after ``head_block`` (the teacher needs only what its head reads).
        """
        tokens, c = self.embed(x, t, y, force_drop_ids)  # (B, T, D), (B, D)
        input_tokens = tokens if self.mask_token_mode == "input" else None
        b, n = tokens.shape[:2]
        if ids_keep is not None:
            ids_restore, mask = masking_from_ids_keep(ids_keep, n)  # (B, T), (B, T)
            tokens = gather_tokens(tokens, ids_keep)  # (B, T_keep, D)
        elif mask_ratio > 0:
            ids_keep, ids_restore, mask = random_masking(n, mask_ratio, b, tokens.device, generator)
            tokens = gather_tokens(tokens, ids_keep)  # (B, T_keep, D)
        else:
            ids_keep = torch.arange(n, device=tokens.device).expand(b, n)  # (B, T), identity
            ids_restore = ids_keep
            mask = tokens.new_zeros(b, n, dtype=torch.float32)  # (B, T)
        if self.cls_token is not None:
            cls = (self.cls_token + self.cls_pos_embed).expand(b, -1, -1)  # (B, 1, D)
            tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + T_keep, D)
        head_tokens = tokens
        for i, block in enumerate(self.blocks, start=1):
            tokens = self._run_block(block, tokens, c)  # (B, [1+]T_keep, D)
            if i == self.head_block:
                head_tokens = tokens
                if stop_after_head_block:
                    break
        if self.head_pool:  # the mean of the (visible) patch tokens as the image-level token, in front
            head_tokens = torch.cat([head_tokens.mean(1, keepdim=True), head_tokens], dim=1)  # (B, 1 + T_keep, D)
        return EncoderOutput(tokens, c, head_tokens, ids_keep, ids_restore, mask, input_tokens)

    def decode(
        self,
        tokens: torch.Tensor,
        c: torch.Tensor,
        ids_restore: torch.Tensor | None,
        input_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder: encoder tokens (B, [1+]T_keep, D) -> network output F (B, out_channels, H, W).

        ``ids_restore`` None means all tokens are present in token order (sampling).
        ``input_tokens`` (B, T, D): the embedded noisy input, the filler of masked positions when
        ``mask_token="input"``.
        """
        if self.decoder_blocks is None:
            raise RuntimeError("this SplitDiT has no decoder (it is a teacher from make_teacher())")
        if self.cls_token is not None:
            tokens = tokens[:, 1:]  # (B, T_keep, D): the [CLS] output does not reach the decoder
        x = self.decoder_embed(tokens)  # (B, T_keep, Dd)
        if ids_restore is not None:
            fill = self.mask_token
            if self.mask_token_mode == "input":  # the masked positions' own noisy input tokens
                ids_masked = ids_restore.argsort(dim=1)[:, x.shape[1] :]  # (B, T - T_keep), in shuffled order
                fill = gather_tokens(self.decoder_embed(input_tokens), ids_masked)  # (B, T - T_keep, Dd)
            x = unshuffle(x, ids_restore, fill)  # (B, T, Dd)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"decoder got {x.shape[1]} tokens, expected {self.num_patches}; pass ids_restore")
        if self.mask_token is not None and self.training and torch.is_grad_enabled() and x.shape[1] == tokens.shape[1]:
            # Nothing masked (e.g. MaskDiT's unmasked fine-tune): keep the mask token in the graph
            # with a zero contribution so DDP does not stop on an unused parameter.
            x = x + 0.0 * self.mask_token.to(x.dtype)  # (B, T, Dd)
        x = x + self.decoder_pos_embed  # (B, T, Dd)
        c_dec = self.decoder_cond(c)  # (B, Dd)
        for block in self.decoder_blocks:
            x = self._run_block(block, x, c_dec)  # (B, T, Dd)
        x = self.final_layer(x, c_dec)  # (B, T, p*p*C_out)
        return self.unpatchify(x)  # (B, C_out, H, W)

    def _run_block(self, block: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, c, use_reentrant=False)
        return block(x, c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W), the inverse of the patch embedding's layout (as DiT)."""
        return unpatchify(x, self.patch_size, self.out_channels)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        mask_ratio: float = 0.0,
        return_tokens: bool = False,
        ids_keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        force_drop_ids: torch.Tensor | None = None,
        head_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | SplitOutput:
        """x (B, C, H, W) noisy input (already c_in-scaled), t (B,) c_noise, y (B,) labels.

        ``return_tokens=False`` (sampling): returns F (B, out_channels, H, W).
        ``return_tokens=True`` (training objectives, one forward so DDP sees every parameter once):
        returns a :class:`SplitOutput` (F, encoder tokens, mask, token ids, head logits if any).
        """
        enc = self.encode(x, t, y, mask_ratio, ids_keep, generator, force_drop_ids)
        nothing_masked = ids_keep is None and mask_ratio == 0
        out = self.decode(
            enc.tokens, enc.c, None if nothing_masked else enc.ids_restore, enc.input_tokens
        )  # (B, C, H, W)
        if not return_tokens:
            return out
        n_img = int(bool(self.use_cls_token or self.head_pool))  # head_ids: a subset of the patch tokens
        head = self.head(select_patch_tokens(enc.head_tokens, n_img, head_ids)) if self.head is not None else None
        return SplitOutput(out, enc.tokens, enc.mask, enc.ids_keep, enc.ids_restore, head)

    # ------------------------------------------------------------------ teacher
    def train(self, mode: bool = True) -> "SplitDiT":
        """As nn.Module.train, except that a teacher always stays in eval mode (no label dropout)."""
        return super().train(False if self.is_teacher else mode)

    def make_teacher(self) -> "SplitDiT":
        """A frozen copy of the encoder side (embedders, pos embed, [CLS], blocks, head).

        The decoder parts are never copied (their attributes are None in the copy), so the teacher's
        ``named_parameters()`` names are a subset of the student's, identical where shared, and an
        EMA can match them by name. Every parameter has ``requires_grad=False`` and the teacher is
        pinned to eval mode (label dropout off even if a parent calls ``.train()``). It can run
        :meth:`encode` (ratio 0) and ``teacher.head``; :meth:`decode`/``forward`` raise.
        """
        memo: dict[int, Any] = {}
        for name in PARTS["decoder"]:
            part = getattr(self, name)
            if part is not None:
                memo[id(part)] = None  # deepcopy returns None for these: skipped, not copied
        teacher = copy.deepcopy(self, memo)
        for name in PARTS["decoder"]:
            setattr(teacher, name, None)
        teacher.is_teacher = True
        teacher.requires_grad_(False)
        teacher.eval()
        return teacher


# --------------------------------------------------------------------------------------------
# Presets and parameter counts
# --------------------------------------------------------------------------------------------

SD_DIT_DECODER_DEPTH = 2  # [choice] SD-DiT's split is unpublished; total depth kept equal to DiT's
SD_DIT_HEAD_DIM = 8192  # [dino/ibot] prototypes K
MASKDIT_XL_DECODER = dict(decoder_depth=8, decoder_hidden_size=512, decoder_num_heads=16)  # [maskdit]
MASKDIT_DECODER_DEPTH = 2  # [choice] for S/B/L: 2 blocks at encoder width after the full-depth encoder


def _sd_dit_config(size: str, patch: int) -> dict[str, Any]:
    s = DIT_SIZES[size]
    return dict(
        patch_size=patch,
        hidden_size=s["hidden_size"],
        num_heads=s["num_heads"],
        encoder_depth=s["depth"] - SD_DIT_DECODER_DEPTH,
        decoder_depth=SD_DIT_DECODER_DEPTH,
        use_cls_token=True,
        mask_token="learned",
        head_dim=SD_DIT_HEAD_DIM,
    )


def _maskdit_config(size: str, patch: int) -> dict[str, Any]:
    s = DIT_SIZES[size]
    dec = MASKDIT_XL_DECODER if size == "XL" else dict(decoder_depth=MASKDIT_DECODER_DEPTH)
    return dict(
        patch_size=patch,
        hidden_size=s["hidden_size"],
        num_heads=s["num_heads"],
        encoder_depth=s["depth"],
        use_cls_token=False,
        mask_token="learned",
        head_dim=0,
        **dec,
    )


def _preset(config: dict[str, Any], name: str) -> Callable[..., SplitDiT]:
    def build(**kwargs: Any) -> SplitDiT:
        return SplitDiT(**{**config, **kwargs})

    build.__name__ = name.replace("-", "_").replace("/", "_")
    build.__doc__ = f"{name}: SplitDiT({config}); keyword arguments override."
    return build


SplitDiT_models: dict[str, Callable[..., SplitDiT]] = {}
for _size in DIT_SIZES:
    for _patch in (2, 4, 8):
        SplitDiT_models[f"SD-DiT-{_size}/{_patch}"] = _preset(_sd_dit_config(_size, _patch), f"SD-DiT-{_size}/{_patch}")
        SplitDiT_models[f"MaskDiT-{_size}/{_patch}"] = _preset(
            _maskdit_config(_size, _patch), f"MaskDiT-{_size}/{_patch}"
        )


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameter counts by part: total, encoder (what the teacher holds minus the head), decoder,
    head, and trainable (excludes the fixed sin-cos tables and the frozen weight-norm magnitude).
    Fixed position embeddings are counted in total/encoder/decoder, as DiT's own count does."""
    counts = {"total": 0, "encoder": 0, "decoder": 0, "head": 0, "trainable": 0}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        part = next(part for part, names in PARTS.items() if top in names)
        counts[part] += p.numel()
        counts["total"] += p.numel()
        counts["trainable"] += p.numel() if p.requires_grad else 0
    return counts


def format_param_table(names: list[str] | None = None) -> str:
    """Markdown table of :func:`count_params` for the given presets (built on the meta device)."""
    names = list(SplitDiT_models) if names is None else names
    rows = ["| model | total | encoder | decoder | head |", "|---|---|---|---|---|"]
    for name in names:
        with torch.device("meta"):
            model = SplitDiT_models[name]()
        n = count_params(model)
        rows.append(
            f"| {name} | {n['total'] / 1e6:.1f}M | {n['encoder'] / 1e6:.1f}M | "
            f"{n['decoder'] / 1e6:.1f}M | {n['head'] / 1e6:.2f}M |"
        )
    return "\n".join(rows)
