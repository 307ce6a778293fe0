"""Config -> network: a DiT for objective=dit, an encoder/decoder SplitDiT for maskdit and sddit."""

from __future__ import annotations

from torch import nn

from ..config import Config
from ..errors import ConfigError
from .dit import DiT, DiT_models
from .split import SplitDiT, SplitDiT_models


def build_model(cfg: Config) -> nn.Module:
    """The raw network F (before EDM preconditioning) that `cfg` describes."""
    m = cfg.model
    common = dict(
        input_size=m.input_size,
        in_channels=m.in_channels,
        num_classes=m.num_classes,
        class_dropout_prob=m.class_dropout_prob,
        learn_sigma=m.learn_sigma,
        gelu=m.gelu,
    )
    if cfg.objective == "dit":
        if m.preset:
            if m.preset not in DiT_models:
                raise ConfigError(f"unknown DiT preset '{m.preset}'; choose one of {', '.join(DiT_models)}")
            model = DiT_models[m.preset](**common)
        else:
            model = DiT(
                patch_size=m.patch_size,
                hidden_size=m.hidden_size,
                depth=m.depth,
                num_heads=m.num_heads,
                mlp_ratio=m.mlp_ratio,
                **common,
            )
    else:
        sd, is_sddit = cfg.sddit, cfg.objective == "sddit"
        image_level = is_sddit and sd.disc_loss == "dino"  # the alignment loss (SRA) reads patch tokens only
        split = dict(
            mask_token=m.mask_token,
            use_cls_token=m.use_cls_token and image_level and sd.image_token == "cls",
            head_pool=image_level and sd.image_token == "mean",
            head_type="mlp" if sd.disc_loss == "align" else "dino",
            head_dim=m.head_dim if is_sddit else 0,
            head_hidden_dim=m.head_hidden_dim,
            head_bottleneck_dim=m.head_bottleneck_dim,
            head_block=m.head_block,
            head_last_init=m.head_last_init,
        )
        if m.head_block < 0:
            raise ConfigError(f"model.head_block={m.head_block} must be >= 0 (0 = the last encoder block)")
        if m.preset:
            if m.preset not in SplitDiT_models:
                raise ConfigError(f"unknown split preset '{m.preset}'; choose one of {', '.join(SplitDiT_models)}")
            model = _checked(lambda: SplitDiT_models[m.preset](**common, **split))
        else:
            if not 0 < m.decoder_depth < m.depth:
                raise ConfigError(
                    f"model.decoder_depth={m.decoder_depth} must be between 1 and model.depth-1={m.depth - 1}"
                )
            model = _checked(
                lambda: SplitDiT(
                    patch_size=m.patch_size,
                    hidden_size=m.hidden_size,
                    num_heads=m.num_heads,
                    mlp_ratio=m.mlp_ratio,
                    encoder_depth=m.depth - m.decoder_depth,
                    decoder_depth=m.decoder_depth,
                    decoder_hidden_size=m.decoder_hidden_size or None,
                    decoder_num_heads=m.decoder_num_heads or None,
                    **common,
                    **split,
                )
            )
    if m.grad_checkpointing:
        model.grad_checkpointing = True
    return model


def _checked(build):
    """Construct a SplitDiT, turning its argument checks into one-line config errors."""
    try:
        return build()
    except ValueError as e:
        raise ConfigError(f"model config: {e}; fix the model.* keys") from None
