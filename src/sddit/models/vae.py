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
    return (s.startswith(("/", ".", "~")) or s.endswith(("/", os.sep)) or s.count("/") > 1
            or (os.sep != "/" and os.sep in s))


def load_vae(name_or_path: str = DEFAULT_VAE, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, local_files_only: bool = False):
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
            raise DataError(f"VAE directory {s} does not exist: pass a directory saved with "
                            f"AutoencoderKL.save_pretrained or a Hub id such as {DEFAULT_VAE}")
        sub = None
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            sub = "vae"
        elif not (path / "config.json").is_file():
            raise DataError(f"VAE directory {path} has no config.json: pass a directory saved with "
                            f"AutoencoderKL.save_pretrained (or a pipeline folder with vae/)")
        try:
            vae = AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype, **opts)
        except Exception as e:
            raise DataError(f"cannot load the VAE in {path}: {_one_line(e)}") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # huggingface_hub deprecation noise
                vae = AutoencoderKL.from_pretrained(s, torch_dtype=dtype, local_files_only=local_files_only, **opts)
        except Exception as e:
            raise DataError(f"cannot load VAE '{s}' from the Hugging Face Hub (offline, or not a Hub id: {_one_line(e, 120)}): without internet, "
                            f"download it elsewhere (huggingface-cli download {s} --local-dir DIR) and pass "
                            f"--vae DIR, a local directory") from None
    return vae.to(device).eval().requires_grad_(False)


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
