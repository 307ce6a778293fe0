"""The SD VAE (a diffusers `AutoencoderKL`): loading it from the Hub or a local folder, and decoding
latents back to images. Encoding for training data is `data/prepare.py`'s job."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import DataError

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(s: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ./, ~, a/b/c, trailing /) is a path."""
    return (
        s.startswith(("/", ".", "~"))
        or s.endswith(("/", os.sep))
        or s.count("/") > 1
        or (os.sep != "/" and os.sep in s)
    )


def vae_reference(name_or_path: str) -> str:
    """How a VAE is recorded (latent manifest, release, run config): a local folder as its absolute
    path, so the record works from any directory and machine that mounts it; a Hub id as given."""
    s = str(name_or_path)
    path = Path(s).expanduser()
    return str(path.resolve()) if path.exists() or _looks_like_path(s) else s


def load_vae(
    name_or_path: str = DEFAULT_VAE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    local_files_only: bool = False,
):
    """diffusers `AutoencoderKL` from a Hugging Face Hub id or a local directory, in eval mode.

    A local directory is one written by `AutoencoderKL.save_pretrained` (config.json + weights), or a
    full Stable Diffusion pipeline folder with a `vae/` sub-folder. Without internet the Hub cannot
    be reached: download the VAE elsewhere and pass its directory.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise DataError("diffusers is not installed: pip install 'sddit[latents]' (diffusers, safetensors)") from None
    import importlib.util

    # without accelerate diffusers warns on every load; the VAE is small, so load it plainly
    opts = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.exists() or _looks_like_path(s):
        if not path.exists():
            raise DataError(
                f"VAE directory {s} does not exist (looked for {path.resolve()}): pass a directory saved "
                f"with AutoencoderKL.save_pretrained or a Hub id such as {DEFAULT_VAE}"
            )
        sub = None
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            sub = "vae"
        elif not (path / "config.json").is_file():
            raise DataError(
                f"VAE directory {path.resolve()} has no config.json: pass a directory saved with "
                f"AutoencoderKL.save_pretrained (or a pipeline folder with vae/)"
            )
        try:
            vae = AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype, **opts)
        except Exception as e:
            raise DataError(f"cannot load the VAE in {path.resolve()}: {_one_line(e)}") from None
    else:
        vae = _from_hub(AutoencoderKL, s, dtype, local_files_only, opts)
    return vae.to(device).eval().requires_grad_(False)


def _from_hub(cls, hub_id: str, dtype, local_files_only: bool, opts: dict):
    """A Hub VAE from the local Hugging Face cache, else downloaded; when the Hub cannot be reached,
    a DataError at once rather than after huggingface_hub's ~30 s of retries."""
    not_here = f"'{hub_id}' is not a folder here (no {Path(hub_id).expanduser().resolve()})"
    fix = (
        f"pass a local directory (--vae DIR): download it where there is internet (huggingface-cli download "
        f"{hub_id} --local-dir DIR) and copy DIR here"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # huggingface_hub deprecation noise
        try:
            return cls.from_pretrained(hub_id, torch_dtype=dtype, local_files_only=True, **opts)
        except Exception:
            pass  # not in the cache (or not a Hub id)
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        unreachable = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable()
        if unreachable:
            raise DataError(
                f"VAE {not_here} nor in the Hugging Face cache, and the Hugging Face Hub cannot be reached "
                f"({unreachable}): {fix}"
            )
        try:
            return cls.from_pretrained(hub_id, torch_dtype=dtype, **opts)
        except Exception as e:
            raise DataError(
                f"VAE {not_here}, and the Hugging Face Hub has no such VAE or refused it "
                f"({_one_line(e, 120)}): pass a Hub id such as {DEFAULT_VAE}, or {fix[0].lower()}{fix[1:]}"
            ) from None


def _hub_unreachable(timeout: float = 3.0) -> str:
    """Why the Hugging Face Hub cannot be reached ('' when a TCP connection to it opens)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return ""  # behind a proxy the host may not resolve here: let huggingface_hub try
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or type(e).__name__}"
    return ""


def vae_downsample(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale_factor: float, chunk: int = 16) -> torch.Tensor:
    """``vae.decode(z / scale_factor).sample`` in float32, clamped to [-1, 1], on the CPU.

    Decodes ``chunk`` latents at a time (a fixed size, so results do not depend on the number of
    processes): the SD VAE decoder needs a few hundred MB of activations per 256px image.
    """
    device = next(vae.parameters()).device
    out = []
    for part in z.split(chunk):
        x = vae.decode(part.to(device, torch.float32) / scale_factor).sample
        out.append(x.float().clamp(-1, 1).cpu())
    return torch.cat(out)
