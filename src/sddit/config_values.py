"""What a config value may be, and how a YAML or `--set` value becomes one.

`RANGES` lists the numeric keys with the values that make sense; `set_key` walks a dotted key into
the dataclasses and `coerce` converts the value to the field's annotated type. Each failure is a
one-line ConfigError, raised before any work.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import ConfigError


def show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_POS_INT = (lambda v: v >= 1, "an integer >= 1")
_NONNEG_INT = (lambda v: v >= 0, "an integer >= 0")
_POS = (lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_NONNEG = (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
_FINITE = (lambda v: math.isfinite(v), "a finite number")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
_UNIT_OPEN = (lambda v: 0 <= v < 1, "in [0, 1)")
# Numeric keys and the values that make sense: a bad one fails here, in one line, before any work
# (a zero patch size used to divide by zero, train.lr=nan trained NaNs, train.log_every=0 crashed).
RANGES = {
    **{
        f"model.{k}": _POS_INT
        for k in (
            "input_size",
            "patch_size",
            "in_channels",
            "hidden_size",
            "depth",
            "num_heads",
            "num_classes",
            "head_dim",
            "head_hidden_dim",
            "head_bottleneck_dim",
        )
    },
    **{f"model.{k}": _NONNEG_INT for k in ("decoder_depth", "decoder_hidden_size", "decoder_num_heads")},
    "model.mlp_ratio": _POS,
    "model.class_dropout_prob": _UNIT_OPEN,
    **{f"diffusion.{k}": _POS for k in ("sigma_data", "P_std", "sigma_min", "sigma_max", "rho")},
    "diffusion.P_mean": _FINITE,
    "maskdit.mae_loss_coef": _NONNEG,
    "maskdit.unmask_finetune_steps": _NONNEG_INT,
    **{
        f"sddit.{k}": _POS
        for k in (
            "teacher_sigma_value",
            "teacher_sigma_fraction",
            "student_temp",
            "teacher_temp",
            "teacher_temp_warmup",
        )
    },
    **{f"sddit.{k}": _UNIT for k in ("teacher_momentum", "teacher_momentum_final", "center_momentum")},
    "sddit.lambda_d": _NONNEG,
    "sddit.teacher_temp_warmup_steps": _NONNEG_INT,
    "sddit.teacher_head_block": _NONNEG_INT,
    "sddit.teacher_time_shift": _UNIT,
    "sddit.disc_sigma_max": _NONNEG,
    "sddit.head_token_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    **{f"train.{k}": _POS_INT for k in ("batch_size", "log_every", "max_bad_steps", "fid_samples")},
    **{
        f"train.{k}": _NONNEG_INT
        for k in ("max_steps", "warmup_steps", "ckpt_every", "keep_last", "fid_every", "num_threads", "cpu_procs")
    },
    "train.lr": _POS,
    "train.betas": _UNIT_OPEN,
    "train.ema_decay": _UNIT,
    **{f"train.{k}": _NONNEG for k in ("weight_decay", "lr_final", "grad_clip")},
    **{f"eval.{k}": _POS_INT for k in ("steps", "batch_size", "grid_steps")},
    "eval.num_samples": _NONNEG_INT,
    "eval.cfg_scale": _FINITE,
    "eval.churn": _NONNEG,
    "eval.grid_cfg_scale": _FINITE,
    "eval.cfg_interval": (lambda v: v >= 0 and not math.isnan(v), "two noise levels >= 0 (inf allowed)"),
}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's annotated type, or raise a one-line ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], key)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("()[] ").split(",") if v.strip()]
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[str, ...]: any length, e.g. train.loggers=jsonl,tensorboard
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key} expects a list, e.g. [a, b] or a,b; got {value!r}")
            return tuple(coerce(v, args[0], key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} expects {len(args)} comma-separated values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} expects a string, got {value!r}")
        return str(value)
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def set_key(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    types_ = field_types(type(obj))
    if head not in types_:
        where = prefix.rstrip(".") or "config"
        valid = ", ".join(prefix + k for k in types_)
        raise ConfigError(f"unknown key '{prefix}{head}' in {where}; valid keys: {valid}")
    current = getattr(obj, head)
    if is_dataclass(current):
        if rest:
            set_key(current, rest, value, prefix + head + ".")
            return
        if not isinstance(value, dict):
            raise ConfigError(f"'{prefix}{head}' is a section; set one of its keys, e.g. {prefix}{head}.<key>=...")
        for k, v in value.items():
            set_key(current, str(k), v, prefix + head + ".")
        return
    if rest:
        raise ConfigError(f"'{prefix}{head}' is not a section, so '{prefix}{dotted}' does not exist")
    setattr(obj, head, coerce(value, types_[head], prefix + head))
