"""Loading a trained model for sampling, and the release format that carries only what sampling needs.

A training checkpoint holds the student, the sampling EMA, the teacher and head, the optimiser and
the RNG states: several GB at XL size. A release (`sddit export`) is a directory with

    model.safetensors   the sampling EMA's weights, under exactly the key names of `DiT` / `SplitDiT`
                        state dicts (so also of official DiT checkpoints for `objective: dit`)
    config.json         {"format": "sddit-pretrained", "version": 1, "config": the run config (what
                        `models.build_model` rebuilds the network from), "latent": bool, "vae" and
                        "scale_factor" (latent models: what decodes the samples), "step", "source"}

Loading it reads a JSON file and a safetensors file: nothing is unpickled, so a release from a
stranger cannot run code. `sddit sample`, `eval` and `generate` and `sddit.load_pretrained` accept
such a directory wherever they accept a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import open_checkpoint
from .config import Config, config_from_dict, config_to_dict
from .diffusion import EDMPrecond
from .errors import CheckpointError, ConfigError, DataError
from .models import build_model
from .models.vae import vae_reference
from .runtime import atomic_path, atomic_write, warn as warn_stderr

EXPORT_FORMAT = "sddit-pretrained"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def is_export(path: str | Path) -> bool:
    """A directory written by `export_pretrained` (a run directory has config.json but no weights file)."""
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS_FILE).is_file() and (p / CONFIG_FILE).is_file()


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """config.json of a release, checked; CheckpointError with the fix otherwise."""
    file = Path(path) / CONFIG_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file} ({type(e).__name__}): re-export with `sddit export`") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f'{file} is not an sddit release (no "format": "{EXPORT_FORMAT}"): pass a directory '
            "written by `sddit export`, a checkpoint or a run directory"
        )
    if int(meta.get("version", 0)) > EXPORT_VERSION:
        raise CheckpointError(
            f"{file} has release format version {meta['version']}; this sddit reads up to "
            f"{EXPORT_VERSION}: upgrade sddit"
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{file} has no run config: re-export with `sddit export`")
    return meta


def _build(cfg: Config, weights: dict[str, torch.Tensor], where: str, device, what: str = "sampling EMA") -> EDMPrecond:
    """The denoiser of `weights`; CheckpointError when they do not fit the config or are not finite
    (a NaN network samples an all-black grid, and exits 0, if let through)."""
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    try:
        net.model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{where}: weights do not match the config stored with them "
            f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
        ) from None
    bad = [name for name, t in net.model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"{where}: the {what} weights hold NaN or inf ({len(bad)} tensor(s), e.g. {bad[0]}): the "
            "run diverged before this checkpoint; use an earlier checkpoint"
        )
    return net.to(device).eval().requires_grad_(False)


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, EDMPrecond, dict[str, Any]]:
    """(run config, sampling denoiser, config.json) of a release directory; reads no pickle."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise DataError("reading a release needs safetensors: pip install safetensors") from None
    meta = read_export_meta(path)
    try:
        cfg = config_from_dict(meta["config"])
    except ConfigError as e:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: {e}") from None
    try:
        weights = load_file(str(Path(path) / WEIGHTS_FILE), device="cpu")
    except Exception as e:  # safetensors raises its own error types for a bad header or truncated data
        raise CheckpointError(
            f"{Path(path) / WEIGHTS_FILE} is unreadable ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:150]}): re-export it"
        ) from None
    return cfg, _build(cfg, weights, str(path), device), meta


def load_sampling_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", warn=warn_stderr, weights: str = "ema"
) -> tuple[Path, Config, EDMPrecond]:
    """(checkpoint file, config, denoiser) of a checkpoint file or run directory (its newest readable
    checkpoint). `weights` is "ema" (the sampling EMA, what every FID here uses) or "raw" (the trained
    weights, to measure what the EMA adds). Loading runs no code from the file (weights-only unpickling)."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', not {weights!r}")
    ckpt, state = open_checkpoint(path, map_location="cpu", warn=warn)
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{ckpt} is not an sddit checkpoint (its 'config' is not a dict)")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: the config stored in it is not valid here ({e})") from None
    return (
        ckpt,
        cfg,
        _build(
            cfg,
            state["ema" if weights == "ema" else "model"],
            str(ckpt),
            device,
            "sampling EMA" if weights == "ema" else "trained",
        ),
    )


def load_sampling_net(path: str | Path, device: str | torch.device = "cpu") -> tuple[Config, EDMPrecond]:
    """The sampling-EMA denoiser of a release directory, a checkpoint file or a run directory
    (student encoder + decoder; the head is loaded but unused), in eval mode without gradients."""
    if is_export(path):
        cfg, net, _ = load_export(path, device)
        return cfg, net
    _, cfg, net = load_sampling_checkpoint(path, device)
    return cfg, net


def check_release_dir(out: str | Path, overwrite: bool = False) -> Path:
    """The directory a release may be written to, checked before any work: never a training run, a
    file, the current directory by an empty name, nor (without `overwrite`) files already there."""
    if not str(out).strip():
        raise ConfigError("--out is empty: pass the release directory to write, e.g. --out releases/my-run")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory: pass the release directory to write")
    if (out / CONFIG_FILE).exists() and not is_export(out) or (out / "checkpoints").exists():
        raise DataError(
            f"{out} holds a training run (config.json or checkpoints/), not a release: choose another --out"
        )
    there = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if (out / name).exists()]
    if there and not overwrite:
        what = "a release" if is_export(out) else " and ".join(there)
        raise DataError(f"{out} already holds {what}: pass --force to replace it, or choose another --out")
    return out


def export_pretrained(
    source: str | Path | dict,
    out: str | Path,
    vae: str | None = None,
    scale_factor: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the sampling EMA of a checkpoint (a file, a run directory's newest, or one already
    loaded with `checkpoint.open_checkpoint`) as a release in `out`.

    `vae` / `scale_factor` are recorded for latent models (resolved by the caller: `sddit export`
    takes them from `--vae`, the run's eval.vae or the latent manifest). An existing release (or any
    model.safetensors / config.json) in `out` is replaced only with `overwrite` (`--force`): it may
    be another run's. Returns the config.json written.
    """
    out = check_release_dir(out, overwrite)
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise DataError("writing a release needs safetensors: pip install safetensors") from None
    if isinstance(source, dict):
        state, ckpt = source, Path(source.get("_path", "checkpoint"))
    else:
        ckpt, state = open_checkpoint(source, map_location="cpu")
    cfg = config_from_dict(state["config"])
    latent = cfg.data.dataset == "latents"
    if latent and not vae:
        raise DataError(f"{ckpt} is a latent model: the release must name its VAE (--vae ID_OR_DIR)")
    _build(cfg, state["ema"], str(ckpt), "cpu")  # refuse weights that would not load back
    # clone: safetensors refuses tensors that share memory; the key names are the DiT / SplitDiT ones
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in state["ema"].items()}
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "weights": WEIGHTS_FILE,
        "what": "sampling EMA of the student (EDM denoiser F; wrap in sddit.diffusion.EDMPrecond)",
        "step": int(state.get("step", 0)),
        "source": str(ckpt.resolve()),
        "objective": cfg.objective,
        "num_classes": cfg.model.num_classes,
        "sample_shape": [cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size],
        "latent": latent,
        "vae": vae_reference(vae) if latent else None,
        "scale_factor": float(scale_factor) if latent else None,
        "config": config_to_dict(cfg),
    }
    # never a half-written release; the umask's mode, not 0600; a full disk is an OSError naming the file
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt", "sddit": EXPORT_FORMAT})
    with atomic_write(out / CONFIG_FILE, "w") as f:
        f.write(json.dumps(meta, indent=2))
    return meta
