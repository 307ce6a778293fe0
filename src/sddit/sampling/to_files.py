"""`sddit generate`: N class-conditional samples as PNGs plus an ADM-format ``samples.npz``.

What a sample depends on, and what it does not
-----------------------------------------------
Sample ``i`` (``0 <= i < N``) uses seed ``seed + i`` alone: its initial noise is the first draw of
``torch.Generator(device).manual_seed(seed + i)`` (:class:`sddit.diffusion.StackedRandomGenerator`),
and by default its class label is the next draw of that same generator, ``randint(num_classes)``
after the noise, which is the convention of NVlabs/edm ``generate.py`` (labels are uniform and
i.i.d., as in DiT's ``sample_ddp.py`` and EDM). ``balanced=True`` (``--balanced``) uses
``i % num_classes`` instead (exactly N/num_classes per class when it divides).

The N indices are cut into *global* batches ``[0, B), [B, 2B), ...`` of ``batch_size`` B, and
global batch ``k`` runs on rank ``k % world_size``. Each batch therefore holds the same samples
whatever the number of processes, so with a fixed ``--batch-size`` and device type the images are
bit-identical for 1 or W processes (not only equal in distribution). Changing ``--batch-size`` can
move a few pixel values by one level (float round-off of batched matmuls), never the content.

Latent models (an sddit checkpoint trained on ``data.dataset: latents``, or an official DiT) are
decoded with a diffusers ``AutoencoderKL``: ``x = vae.decode(z / scale_factor).sample`` clamped to
[-1, 1], in float32 whatever ``precision`` the network runs in. The VAE and scale factor come from
the latent manifest the checkpoint was trained on (``data.root/manifest.json``) when that folder is
reachable; otherwise ``vae=`` (``--vae``) is required. Official DiT checkpoints default to
``stabilityai/sd-vae-ft-ema`` (DiT ``sample_ddp.py``'s default) with scale 0.18215.

Outputs in ``out``: ``images/{i:06d}.png`` (grey PNGs for 1-channel data), then, after a barrier,
rank 0 writes ``samples.npz`` (``arr_0``: uint8 (N, H, W, 3), grey repeated to 3 channels, the
layout ADM's evaluator reads; ``arr_1``: int64 labels, as in ADM's labelled reference batches) and
``samples.json`` (settings, checkpoint, sampler, git commit, date). The ``.npz`` is streamed image
by image, so 50k ImageNet samples (9.8 GB) never sit in memory at once.

``resume=True`` (``--resume``) continues an interrupted run in the same ``out``: global batches
whose PNGs all exist are skipped (PNGs are written atomically), after checking that
``samples.json`` records the same settings.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed as dist
from ..errors import DataError
from ..runtime import atomic_write, git_commit
from .decode import load_decoder
from .sample import quantize, sample_seeds
from .sources import SampleSource, resolve_vae

__all__ = [
    "assign_batches",
    "generate_samples",
    "sample_batch",
    "seed_labels",
    "write_image_npz",
    "IMAGES_DIR",
    "NPZ_NAME",
    "JSON_NAME",
]

IMAGES_DIR = "images"
NPZ_NAME = "samples.npz"
JSON_NAME = "samples.json"
# Keys of samples.json that must match for --resume (they decide the bits of every image).
RESUME_KEYS = (
    "checkpoint",
    "official_dit",
    "model",
    "image_size",
    "num_samples",
    "seed",
    "steps",
    "cfg_scale",
    "labels",
    "precision",
    "batch_size",
    "sampler_kwargs",
    "vae",
    "scale_factor",
    "image_shape",
)


def seed_labels(seeds: list[int], num_classes: int, shape: tuple[int, ...], device: str | torch.device) -> torch.Tensor:
    """Class label of each seed, EDM ``generate.py`` style: ``randint`` right after the noise draw.

    Recomputes what :func:`sample_batch` draws (used for batches that ``resume`` skips).
    """
    from ..diffusion import StackedRandomGenerator

    rnd = StackedRandomGenerator(device, seeds)
    rnd.randn((len(seeds), *shape))
    return rnd.randint(num_classes, size=[len(seeds)]).cpu()


@torch.no_grad()
def sample_batch(
    source: SampleSource,
    seeds: list[int],
    labels: torch.Tensor | None,
    *,
    steps: int,
    cfg_scale: float,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of samples (float, on the CPU) and its labels, as NVlabs/edm ``generate.py`` draws them.

    Per seed: noise = ``randn(shape)`` of ``Generator(seed)``, then (if ``labels`` is None) the label
    = ``randint(num_classes)`` of the same generator; churn noise (if any) continues that stream.
    Unlike :func:`sddit.sampling.generate` the output is NOT clamped: for latent models it is a
    latent (std ~1, beyond [-1, 1]) that the VAE decodes; pixel outputs are clamped by the caller.
    """
    source.net.eval()
    return sample_seeds(
        source.net,
        seeds,
        source.shape,
        labels,
        num_classes=source.num_classes,
        num_steps=steps,
        cfg_scale=cfg_scale,
        null_label=source.null_label,
        device=device,
        sampler_kwargs=source.sampler_kwargs,
        precision=precision,
    )


def assign_batches(num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """This rank's global batches ``[start, stop)``: batch k of size ``batch_size`` goes to rank k % W."""
    starts = range(0, num_samples, batch_size)
    return [(s, min(s + batch_size, num_samples)) for k, s in enumerate(starts) if k % world_size == rank]


def _png_path(out: Path, i: int) -> Path:
    return out / IMAGES_DIR / f"{i:06d}.png"


def _write_png(path: Path, image: np.ndarray) -> None:
    """One HWC uint8 image, written atomically (never a half-written PNG for --resume to trust)."""
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format="PNG", compress_level=1)


def _read_png_rgb(path: Path, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(
            f"{path} is unreadable ({type(e).__name__}): delete it and run again with --resume, which "
            "generates it again"
        ) from None
    if arr.shape[:2] != hw:
        raise DataError(
            f"{path} is {arr.shape[1]}x{arr.shape[0]}, expected {hw[1]}x{hw[0]}: remove stale files from "
            "that folder and generate again"
        )
    return arr


def write_image_npz(
    path: str | Path, images: Iterable[np.ndarray], shape: tuple[int, int, int, int], labels: np.ndarray | None = None
) -> Path:
    """Stream uint8 HWC images into an ``.npz`` holding ``arr_0`` (N, H, W, 3) (+ ``arr_1`` labels).

    Same container as ``np.savez`` (a zip of ``.npy`` members, stored uncompressed, zip64), written
    one image at a time to a temporary file that is renamed at the end.
    """
    path = Path(path)
    count = 0
    with atomic_write(path) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": tuple(int(s) for s in shape),
            }
            np.lib.format.write_array_header_1_0(f, header)
            for image in images:
                if image.shape != tuple(shape[1:]) or image.dtype != np.uint8:
                    raise DataError(f"image {count} is {image.dtype} {image.shape}, expected uint8 {tuple(shape[1:])}")
                f.write(np.ascontiguousarray(image).tobytes())
                count += 1
        if count != shape[0]:
            raise DataError(f"wrote {count} images into {path}, expected {shape[0]}")
        if labels is not None:
            with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    return path


def _png_done(path: Path, hw: tuple[int, int]) -> bool:
    """Whether --resume may keep this PNG: it exists, opens and has the size of this run's images
    (a 0-byte or foreign file is generated again, never packed)."""
    from PIL import Image

    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path) as img:
            return (img.height, img.width) == tuple(hw)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


def _pngs_in_order(out: Path, n: int, hw: tuple[int, int]) -> Iterator[np.ndarray]:
    for i in range(n):
        yield _read_png_rgb(_png_path(out, i), hw)


def _check_out_dir(out: Path, settings: dict, resume: bool) -> None:
    """Refuse to mix two runs' PNGs in one folder; with resume, require the same settings."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder: choose another --out")
    existing = any((out / IMAGES_DIR).glob("*.png")) if (out / IMAGES_DIR).is_dir() else False
    if not resume:
        if existing:
            raise DataError(
                f"{out / IMAGES_DIR} already holds PNGs from an earlier run: pass --resume to finish that "
                "run (same settings), or choose an empty --out"
            )
        earlier = [name for name in (NPZ_NAME, JSON_NAME) if (out / name).exists()]
        if earlier:
            raise DataError(
                f"{out} already holds {' and '.join(earlier)} from an earlier run, which this run would "
                "overwrite: choose an empty --out, or move them away"
            )
        return
    meta = out / JSON_NAME
    if not meta.exists():
        if existing or (out / NPZ_NAME).exists():
            raise DataError(
                f"--resume: {meta} is missing, so the files in {out} cannot be checked against these "
                "settings; choose an empty --out"
            )
        return
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"--resume: cannot read {meta}: {e}") from None
    diff = [k for k in RESUME_KEYS if old.get(k) != settings.get(k)]
    if diff:
        changes = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        raise DataError(
            f"--resume: {out} was generated with other settings ({changes}); use the same ones or another --out"
        )


def generate_samples(
    source: SampleSource,
    out: str | Path,
    num_samples: int,
    *,
    seed: int = 0,
    steps: int = 40,
    cfg_scale: float = 1.5,
    balanced: bool = False,
    batch_size: int = 64,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    vae: str | None = None,
    scale_factor: float | None = None,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    """Generate, write the PNGs of this rank's batches, then (rank 0) ``samples.npz`` and ``samples.json``.

    Call inside an initialised process group for multi-process runs (``torchrun``; the CLI does
    it); without one this is the single-process run. Returns the ``samples.json`` dict on rank 0
    (``{}`` on other ranks).
    """
    if num_samples < 1 or batch_size < 1 or steps < 1:
        raise DataError("--num-samples, --batch-size and --steps must be >= 1")
    if precision not in ("fp32", "bf16"):
        raise DataError(f"precision must be fp32 or bf16, got {precision!r}")
    out = Path(out).expanduser()
    device = torch.device(device)
    rank, world = dist.rank(), dist.world_size()

    decoder, vae_id, vae_origin = None, None, None
    if source.latent:
        vae_id, scale_factor, vae_origin = resolve_vae(source, vae, scale_factor)
        decoder = load_decoder(vae_id, scale_factor, vae_origin, device, source.shape[0])
        image_shape = decoder.image_shape(source.shape)
    else:
        scale_factor = None
        image_shape = source.shape
    settings = {
        "checkpoint": source.checkpoint if source.kind == "sddit" else None,
        "official_dit": source.checkpoint if source.kind == "official-dit" else None,
        "model": source.describe.get("model"),
        "image_size": source.describe.get("image_size"),
        "num_samples": num_samples,
        "seed": seed,
        "seeds": f"{seed}..{seed + num_samples - 1}",
        "labels": "balanced (i % num_classes)" if balanced else "drawn from each seed (EDM generate.py)",
        "num_classes": source.num_classes,
        "sampler": "edm_heun (Karras et al. 2022, Algorithm 1, deterministic)",
        "steps": steps,
        "nfe": 2 * steps - 1,
        "cfg_scale": cfg_scale,
        "sampler_kwargs": {k: float(v) for k, v in source.sampler_kwargs.items()},
        "precision": precision,
        "batch_size": batch_size,
        "vae": vae_id,
        "vae_from": vae_origin,
        "scale_factor": scale_factor,
        "image_shape": [image_shape[1], image_shape[2], 3],
    }
    _check_out_dir(out, settings, resume)
    dist.barrier()  # every rank checked the folder before rank 0 writes into it
    if rank == 0:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (out / JSON_NAME).write_text(json.dumps({**settings, "status": "running"}, indent=2))
    dist.barrier()

    mine = assign_batches(num_samples, batch_size, rank, world)
    labels_of: dict[int, int] = {}
    todo, skipped = [], 0
    for start, stop in mine:
        idx = range(start, stop)
        if resume and all(_png_done(_png_path(out, i), image_shape[1:]) for i in idx):
            seeds = [seed + i for i in idx]
            labels = (
                torch.tensor([i % source.num_classes for i in idx])
                if balanced
                else seed_labels(seeds, source.num_classes, source.shape, device)
            )
            labels_of.update(zip(idx, labels.tolist()))
            skipped += stop - start
        else:
            todo.append(idx)

    t0 = time.perf_counter()
    show = progress and rank == 0
    from tqdm.auto import tqdm

    desc = f"generate ({steps} Heun steps" + (f", rank 0 of {world})" if world > 1 else ")")
    with tqdm(total=sum(map(len, todo)), desc=desc, unit="img", disable=not show) as bar:
        for idx in todo:
            seeds = [seed + i for i in idx]
            given = torch.tensor([i % source.num_classes for i in idx]) if balanced else None
            x, labels = sample_batch(
                source, seeds, given, steps=steps, cfg_scale=cfg_scale, precision=precision, device=device
            )
            labels_of.update(zip(idx, labels.tolist()))
            x = decoder(x) if decoder is not None else x.clamp(-1, 1)
            arr = quantize(x).permute(0, 2, 3, 1).numpy()  # (b, H, W, C) uint8
            for i, image in zip(idx, arr):
                _write_png(_png_path(out, i), image)
            bar.update(len(seeds))
    seconds = time.perf_counter() - t0

    all_labels = dist.gather_objects(labels_of)
    dist.barrier()  # every PNG is on disk
    if rank != 0:
        return {}
    merged: dict[int, int] = {}
    for part in all_labels:
        merged.update(part)
    labels_arr = np.array([merged[i] for i in range(num_samples)], dtype=np.int64)
    h, w = image_shape[1], image_shape[2]
    missing = [i for i in range(num_samples) if not _png_path(out, i).exists()]
    if missing:
        raise DataError(
            f"{len(missing)} PNGs are missing in {out / IMAGES_DIR} (first {missing[0]:06d}.png): "
            "run again with --resume"
        )
    log(f"packing {num_samples} images into {out / NPZ_NAME}")
    write_image_npz(out / NPZ_NAME, _pngs_in_order(out, num_samples, (h, w)), (num_samples, h, w, 3), labels_arr)
    meta = {
        **settings,
        "status": "done",
        "npz": NPZ_NAME,
        "npz_layout": "arr_0 uint8 (N, H, W, 3); arr_1 int64 labels",
        "images": f"{IMAGES_DIR}/{{i:06d}}.png",
        "kind": source.kind,
        **{k: v for k, v in source.describe.items() if k not in settings},
        "class_counts": np.bincount(labels_arr, minlength=source.num_classes).tolist(),
        "world_size": world,
        "device": str(device),
        "skipped_existing": skipped if resume else None,
        "rank0_seconds": round(seconds, 1),
        "git": git_commit(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / JSON_NAME).write_text(json.dumps(meta, indent=2))
    return meta
