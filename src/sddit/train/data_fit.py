"""The model's input shape and class count, reconciled with the data before anything is built.

Why: a preset's sizes are a guess about the data; where the user did not choose them the data's
win (a latent manifest knows its shape), where they did and the data disagrees it is a one-line
error, and labels outside [0, num_classes) never reach the class embedding.
"""

from __future__ import annotations

import torch

from ..config import Config, explicit_keys
from ..data import ImageDataset
from ..errors import ConfigError


def fit_model_to_data(cfg: Config, dataset: ImageDataset, log) -> None:
    """Take the shapes the user left open from the data, then check shape and labels."""
    _shapes_from_data(cfg, dataset, log)
    if dataset.shape != (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size):
        raise ConfigError(
            f"data is {tuple(dataset.shape)} but the model expects ({cfg.model.in_channels}, "
            f"{cfg.model.input_size}, {cfg.model.input_size}); set model.in_channels/model.input_size"
        )
    _check_labels(cfg, dataset)


def _shapes_from_data(cfg: Config, dataset: ImageDataset, log) -> None:
    """Input channels, size and class count as the data has them (a latent manifest knows them)
    wherever the user left the preset's or default values; a value they chose that disagrees is
    a one-line error. Without this a 3-class folder trained a 1000-class model without a word."""
    (c, h, w) = dataset.shape
    data = {"in_channels": c, "input_size": h, "num_classes": len(dataset.class_names)}
    if h != w:
        return  # not square: the shape check below says so
    chosen, taken = explicit_keys(cfg), []
    where = f"the data in {cfg.data.root}" if cfg.data.dataset == "latents" else f"the {cfg.data.dataset} data"
    for name, value in data.items():
        now = getattr(cfg.model, name)
        if now == value:
            continue
        if f"model.{name}" in chosen:
            if name == "num_classes" and now < value:
                _check_labels(cfg, dataset)  # labels past the embedding: that error, which names the null class
            raise ConfigError(
                f"model.{name}={now} was set, but {where} has {name}={value}: "
                f"remove the setting (it is then taken from the data) or set model.{name}={value}"
            )
        setattr(cfg.model, name, value)
        taken.append(f"model.{name}={value} (the config had {now})")
    if taken:
        cfg.validate()  # e.g. a patch size that does not divide the new input size
        log(f"note: from {where}: {', '.join(taken)}")


def _check_labels(cfg: Config, dataset: ImageDataset) -> None:
    """Labels must lie in [0, model.num_classes): label num_classes is the CFG null class (it would
    silently train as "unconditional") and larger ones index past the class embedding."""
    labels, k = getattr(dataset, "labels", None), cfg.model.num_classes
    if isinstance(labels, torch.Tensor) and len(labels):
        lo, hi = int(labels.min()), int(labels.max())
    else:  # latents: every label was checked against the manifest's classes when the shards opened
        lo, hi = 0, dataset.num_classes - 1
    if lo < 0 or hi >= k:
        raise ConfigError(
            f"the data has labels {lo}..{hi} but model.num_classes={k}: labels must lie in [0, {k}) "
            f"(label {k} is the null class of classifier-free guidance); set "
            f"model.num_classes={max(hi + 1, dataset.num_classes)}"
        )
