"""Image folder -> SD-VAE posterior moments, in rank-disjoint shards (`sddit prepare`).

Input: an ImageNet-style folder, one sub-folder per class; the class index is the position of the
folder name in the sorted list of class folders (torchvision's `ImageFolder` convention, so
ImageNet's `n01440764` is class 0).

Preprocessing is ADM's (openai/guided-diffusion `center_crop_arr`), which DiT and MaskDiT also use:
halve the image with a BOX filter while its short side is at least twice the target size, resize
with BICUBIC so the short side equals the target, then crop the centre square. Images whose short
side is below the target are upscaled by that bicubic step, as in ADM; they are counted as
`upscaled` in the manifest, and `min_size` rejects them instead (counted as `too_small`, skipped).
Every image is opened with PIL and converted to RGB (`Image.convert("RGB")`, as ADM does): grey
(L), RGBA (alpha dropped), CMYK, palette (P) and other modes are converted and counted per mode in
the manifest under `converted`. EXIF orientation is not applied (ADM does not either). Unreadable or
corrupt files are skipped and counted as `bad`; a rank stops with an error as soon as its bad files
exceed `max_bad_fraction` of its files, since that means a broken folder rather than a few bad JPEGs.

Output (SPEC section 6/8): for every image (and, by default, its horizontal mirror as a second,
separately encoded entry) the VAE posterior **moments** -- `latent_dist.mean` and
`latent_dist.logvar` concatenated on channels, float16, shape (N, 2*C, H/8, W/8) -- so that training
draws a fresh posterior sample every step (`latents.LatentDataset`) instead of freezing one sample.

Layout of OUT:

    shard-r{rank:03d}-{k:05d}.npz   moments float16 (N, 2C, h, w), labels int64 (N,), flips bool (N,),
                                    source int64 (N,) (index into the sorted file list), meta (JSON str)
    rank-{rank:03d}-of-{world:03d}.json   one rank's counts and shard list, written when it finishes
    manifest.json                   written only by rank 0 (or `merge`) once every rank has finished

Rank r of W takes files[r::W] of the sorted file list, writes only files named after its own rank,
and replaces each atomically (temporary file + `os.replace`), so ranks never write the same file and
an interrupted run leaves no half-written shard. A re-run skips shards already written with the
same settings and the same source files (`resume=True`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
SD_SCALE_FACTOR = 0.18215
MANIFEST = "manifest.json"
FORMAT = "sddit-latents"
FORMAT_VERSION = 1
_BAD_EXAMPLES = 5


# --------------------------------------------------------------------------------------------------
# images


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's centre crop: uint8 array (image_size, image_size, C) from a PIL image.

    Same preprocessing as ADM (guided-diffusion `image_datasets.center_crop_arr`), DiT and MaskDiT:
    BOX-downsample by halves while the short side is >= 2 * image_size (cheap anti-aliasing), then a
    BICUBIC resize so the short side is exactly image_size (this upsamples small images), then the
    centre square (for odd margins the extra pixel is left on the right/bottom).
    """
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class_names) of an ImageNet-style folder ROOT/<class>/.../<image>.

    Files are sorted (deterministic across runs and ranks); labels index the sorted class folder
    names. Hidden files and folders are skipped; extensions are matched case-insensitively. A class
    folder without images keeps its index (so labels do not shift) and is reported by `prepare`.
    """
    root = Path(root).expanduser()
    exts = ", ".join(IMAGE_EXTENSIONS)
    if not root.exists():
        raise DataError(f"image folder {root} not found: pass a directory with one sub-folder of images per class "
                        f"(e.g. ImageNet's train/)")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory: pass a folder with one sub-folder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders: expected {root}/<class>/<image> "
                        f"with extensions {exts}")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath) / fn)
                    labels.append(label)
    if not files:
        raise DataError(f"image folder {root} has {len(classes)} class sub-folders but no images "
                        f"(extensions accepted: {exts})")
    return files, labels, classes


def _load_image(path: Path, image_size: int, min_size: int) -> tuple[np.ndarray | None, dict]:
    """(crop or None, info); never raises for a bad image -- the reason goes in info['error']."""
    from PIL import Image

    info: dict[str, Any] = {"mode": None, "upscaled": False, "error": None, "too_small": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency / EXIF warnings on odd but valid files
            with Image.open(path) as img:
                img.load()
                info["mode"] = img.mode
                if min(img.size) < 1:
                    raise ValueError(f"empty image {img.size}")
                if min(img.size) < min_size:
                    info["too_small"] = True
                    info["error"] = f"{img.size[0]}x{img.size[1]} is below --min-size {min_size}"
                    return None, info
                info["upscaled"] = min(img.size) < image_size
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                arr = center_crop_arr(rgb, image_size)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        info["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        return None, info
    return np.ascontiguousarray(arr), info


# --------------------------------------------------------------------------------------------------
# VAE


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
def encode_moments(vae, images: np.ndarray, device, dtype: torch.dtype, hflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, H, W, 3) -> float16 moments (B or 2B, 2C, h, w) and flip flags; flips follow originals."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    flips = np.zeros(len(x) * (2 if hflip else 1), dtype=bool)
    if hflip:
        x = torch.cat([x, x.flip(-1)])
        flips[len(images):] = True
    dist = vae.encode(x.to(dtype)).latent_dist
    moments = torch.cat([dist.mean, dist.logvar], dim=1).float()
    out = moments.cpu().numpy().astype(np.float16)
    if not np.isfinite(out).all():
        raise DataError("the VAE produced non-finite moments (or they overflow float16): encode in float32 "
                        "(--dtype float32)")
    return out, flips


# --------------------------------------------------------------------------------------------------
# shards and manifest


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def shard_name(rank: int, k: int) -> str:
    return f"shard-r{rank:03d}-{k:05d}.npz"


def summary_name(rank: int, world_size: int) -> str:
    return f"rank-{rank:03d}-of-{world_size:03d}.json"


def _digest(root: Path, files: list[Path], labels: list[int]) -> str:
    h = hashlib.sha1()
    for f, y in zip(files, labels):
        h.update(f"{f.relative_to(root).as_posix()}\t{y}\n".encode())
    return h.hexdigest()


def _empty_counts() -> dict:
    return {"files": 0, "images": 0, "entries": 0, "flips": 0, "bad": 0, "too_small": 0, "upscaled": 0,
            "converted": {}}


def _add_counts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if k == "converted":
            conv = dict(a.get("converted", {}))
            for mode, n in v.items():
                conv[mode] = conv.get(mode, 0) + n
            out["converted"] = dict(sorted(conv.items()))
        else:
            out[k] = a.get(k, 0) + v
    return out


def _read_shard_meta(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except Exception:
        return None


def prepare(root: str | Path, out_dir: str | Path, image_size: int = 256, vae: str = DEFAULT_VAE,
            hflip_copies: bool = True, batch_size: int = 32, device: str = "cpu", rank: int = 0,
            world_size: int = 1, shard_size: int = 5000, max_bad_fraction: float = 0.01,
            scale_factor: float = SD_SCALE_FACTOR, progress: bool = True, min_size: int = 0,
            dtype: str | torch.dtype = "float32", num_workers: int = 4, resume: bool = True,
            split: str = "train", wait_for_ranks: float = 0.0, local_files_only: bool = False) -> dict:
    """Encode this rank's slice (files[rank::world_size]) of ROOT into shards in OUT; returns its summary.

    `shard_size` counts source images per shard (entries are twice that with flips). Rank 0 writes
    manifest.json when every rank's summary is present, waiting up to `wait_for_ranks` seconds for
    them (torchrun); otherwise run `merge(out_dir)` after all ranks finish. See the module docstring.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    if image_size < 1 or batch_size < 1 or shard_size < 1:
        raise DataError("image size, batch size and shard size must be positive")
    root, out_dir = Path(root).expanduser(), Path(out_dir).expanduser()
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    files, labels, classes = scan_image_folder(root)
    mine = list(range(rank, len(files), world_size))
    vae_model = load_vae(vae, device, torch_dtype, local_files_only=local_files_only)
    factor = vae_downsample(vae_model)
    if image_size % factor:
        raise DataError(f"image size {image_size} is not divisible by the VAE's downsampling factor {factor}")
    vae_scale = getattr(vae_model.config, "scaling_factor", None)
    if vae_scale is not None and abs(vae_scale - scale_factor) > 1e-6 and rank == 0:
        print(f"note: scale factor {scale_factor} differs from the VAE config's scaling_factor {vae_scale}",
              file=sys.stderr)
    latent_shape = [int(vae_model.config.latent_channels), image_size // factor, image_size // factor]

    out_dir.mkdir(parents=True, exist_ok=True)
    # Each rank removes only its own outputs from earlier runs; rank 0 also the manifest, so a
    # partial re-run is never mistaken for a finished one.
    for old in out_dir.glob(f"rank-{rank:03d}-of-*.json"):
        old.unlink()
    if rank == 0 and (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).unlink()
    num_shards = math.ceil(len(mine) / shard_size)
    current = {shard_name(rank, k) for k in range(num_shards)}
    for old in out_dir.glob(f"shard-r{rank:03d}-*.npz"):
        if old.name not in current:
            old.unlink()

    settings = {"image_size": image_size, "vae": str(vae), "hflip": bool(hflip_copies), "min_size": int(min_size),
                "latent_shape": latent_shape, "dtype": str(torch_dtype).removeprefix("torch.")}
    counts = _add_counts(_empty_counts(), {"files": len(mine)})
    bad_examples: list[str] = []
    bad_limit = max_bad_fraction * len(mine)
    shards: list[dict] = []
    show = progress and rank == 0
    bar = None
    if show:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), unit="img", desc=f"prepare rank {rank}/{world_size}", dynamic_ncols=True)
        except ImportError:
            bar = None
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    def load_batch(idx: list[int]):
        fn = lambda i: _load_image(files[i], image_size, min_size)  # noqa: E731
        return pool.map(fn, idx) if pool is not None else map(fn, idx)

    try:
        for k in range(num_shards):
            idx = mine[k * shard_size : (k + 1) * shard_size]
            name = shard_name(rank, k)
            key = dict(settings, start=k * shard_size, stop=k * shard_size + len(idx),
                       sources=_digest(root, [files[i] for i in idx], [labels[i] for i in idx]))
            meta = _read_shard_meta(out_dir / name) if resume and (out_dir / name).exists() else None
            reused = meta is not None and meta.get("key") == key
            if reused:
                sc = meta["counts"]
                bad_examples.extend(meta.get("bad_examples", []))
            else:
                sc = _empty_counts()
                moments, labs, flips, srcs, shard_bad = [], [], [], [], []
                batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
                pending = load_batch(batches[0]) if batches else None
                for b, bidx in enumerate(batches):
                    results = list(pending)
                    pending = load_batch(batches[b + 1]) if b + 1 < len(batches) else None  # prefetch
                    good_arr, good_idx = [], []
                    for i, (arr, info) in zip(bidx, results):
                        if info["mode"] is not None and info["mode"] != "RGB" and arr is not None:
                            sc["converted"][info["mode"]] = sc["converted"].get(info["mode"], 0) + 1
                        if arr is None:
                            if info["too_small"]:
                                sc["too_small"] += 1
                                continue
                            sc["bad"] += 1
                            shard_bad.append(f"{files[i].relative_to(root).as_posix()}: {info['error']}")
                            if counts["bad"] + sc["bad"] > bad_limit:
                                ex = "; ".join((bad_examples + shard_bad)[:3])
                                raise DataError(f"{counts['bad'] + sc['bad']} of rank {rank}'s {len(mine)} images in "
                                                f"{root} are unreadable (more than --max-bad-fraction "
                                                f"{max_bad_fraction:g}), e.g. {ex}")
                            continue
                        sc["upscaled"] += int(info["upscaled"])
                        good_arr.append(arr)
                        good_idx.append(i)
                    if good_arr:
                        m, f = encode_moments(vae_model, np.stack(good_arr), device, torch_dtype, hflip_copies)
                        reps = 2 if hflip_copies else 1
                        moments.append(m)
                        flips.append(f)
                        labs.append(np.tile(np.array([labels[i] for i in good_idx], dtype=np.int64), reps))
                        srcs.append(np.tile(np.array(good_idx, dtype=np.int64), reps))
                    if bar is not None:
                        bar.update(len(bidx))
                n_good = sum(len(a) for a in srcs) // (2 if hflip_copies else 1)
                sc.update(files=len(idx), images=n_good, entries=sum(len(a) for a in srcs),
                          flips=int(sum(int(f.sum()) for f in flips)))
                sc["converted"] = dict(sorted(sc["converted"].items()))
                c, h, w = latent_shape
                arrays = {
                    "moments": np.concatenate(moments) if moments else np.zeros((0, 2 * c, h, w), np.float16),
                    "labels": np.concatenate(labs) if labs else np.zeros(0, np.int64),
                    "flips": np.concatenate(flips) if flips else np.zeros(0, bool),
                    "source": np.concatenate(srcs) if srcs else np.zeros(0, np.int64),
                    "meta": np.array(json.dumps({"key": key, "counts": sc, "bad_examples": shard_bad[:_BAD_EXAMPLES]})),
                }
                _atomic_write(out_dir / name, lambda f: np.savez(f, **arrays))
                bad_examples.extend(shard_bad)
            if bar is not None and reused:
                bar.update(len(idx))
            counts = _add_counts(counts, {k2: v for k2, v in sc.items() if k2 != "files"})
            if counts["bad"] > bad_limit:
                raise DataError(f"{counts['bad']} of rank {rank}'s {len(mine)} images in {root} are unreadable (more "
                                f"than --max-bad-fraction {max_bad_fraction:g}), e.g. {'; '.join(bad_examples[:3])}")
            shards.append({"file": name, "entries": sc["entries"], "rank": rank})
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()

    summary = {
        "format": FORMAT, "version": FORMAT_VERSION, "rank": rank, "world_size": world_size, "split": split,
        "source_root": str(root), "num_files_total": len(files), "sources": _digest(root, files, labels),
        "class_names": classes, "empty_classes": [classes[c] for c in sorted(set(range(len(classes))) - set(labels))],
        "scale_factor": float(scale_factor), "resolution": image_size,
        "downsample": factor, **{k: v for k, v in settings.items() if k not in ("image_size",)},
        "counts": counts, "bad_examples": bad_examples[:_BAD_EXAMPLES], "shards": shards,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_json(out_dir / summary_name(rank, world_size), summary)
    if rank == 0:
        deadline = time.monotonic() + wait_for_ranks
        while True:
            missing = [r for r in range(world_size) if not (out_dir / summary_name(r, world_size)).exists()]
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        if not missing:
            summary["manifest"] = merge(out_dir, max_bad_fraction=max_bad_fraction)
        elif progress:
            print(f"rank 0 done; ranks {missing} still running: after they finish, run "
                  f"`sddit prepare {root} {out_dir} --merge` to write {MANIFEST}", file=sys.stderr)
    return summary


def merge(out_dir: str | Path, world_size: int | None = None, max_bad_fraction: float = 1.0) -> dict:
    """Combine the rank summaries in OUT into manifest.json (rank 0's job; safe to re-run). Returns it.

    The world size is rank 0's unless given; summaries of other world sizes (older runs) are ignored.
    """
    out_dir = Path(out_dir).expanduser()
    if world_size is None:
        firsts = sorted(out_dir.glob("rank-000-of-*.json"))
        if not firsts:
            raise DataError(f"no rank summaries (rank-000-of-NNN.json) in {out_dir}: run `sddit prepare ROOT "
                            f"{out_dir}` first")
        newest = max(firsts, key=lambda p: p.stat().st_mtime)  # rank 0 deletes its older summaries itself
        world_size = int(json.loads(newest.read_text())["world_size"])
    summaries = []
    for r in range(world_size):
        p = out_dir / summary_name(r, world_size)
        if not p.exists():
            raise DataError(f"rank {r} of {world_size} has not finished ({p.name} missing in {out_dir}): run it "
                            f"(sddit prepare ... --rank {r} --world-size {world_size}), then --merge")
        summaries.append(json.loads(p.read_text()))
    same = ("resolution", "vae", "hflip", "min_size", "latent_shape", "class_names", "sources", "scale_factor")
    for s in summaries[1:]:
        diff = [k for k in same if s.get(k) != summaries[0].get(k)]
        if diff:
            raise DataError(f"rank {s['rank']} in {out_dir} was prepared with different {', '.join(diff)} than rank 0: "
                            f"re-run it with the same settings")
    counts = _empty_counts()
    for s in summaries:
        counts = _add_counts(counts, s["counts"])
    if counts["bad"] > max_bad_fraction * max(counts["files"], 1):
        raise DataError(f"{counts['bad']} of {counts['files']} images are unreadable (more than --max-bad-fraction "
                        f"{max_bad_fraction:g})")
    for s in summaries:
        for sh in s["shards"]:
            if not (out_dir / sh["file"]).exists():
                raise DataError(f"shard {sh['file']} listed by rank {s['rank']} is missing in {out_dir}: re-run that rank")
    s0 = summaries[0]
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "split": s0["split"], "source_root": s0["source_root"],
        "resolution": s0["resolution"], "latent_shape": s0["latent_shape"], "downsample": s0["downsample"],
        "moments": "float16 (N, 2*C, h, w): posterior mean then logvar on channels",
        "vae": s0["vae"], "vae_dtype": s0["dtype"], "scale_factor": s0["scale_factor"], "hflip": s0["hflip"],
        "min_size": s0["min_size"], "num_classes": len(s0["class_names"]), "class_names": s0["class_names"],
        "empty_classes": s0.get("empty_classes", []),
        "world_size": world_size, "counts": counts,
        "per_rank": [dict(rank=s["rank"], seconds=s["seconds"], **{k: v for k, v in s["counts"].items()})
                     for s in summaries],
        "bad_examples": [e for s in summaries for e in s["bad_examples"]][:_BAD_EXAMPLES],
        "shards": [sh for s in summaries for sh in s["shards"]],
        "sources": s0["sources"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json(out_dir / MANIFEST, manifest)
    return manifest


def prepare_from_env(root: str | Path, out_dir: str | Path, device: str = "cuda", **kwargs) -> dict:
    """`prepare` under torchrun: rank/world size from RANK/WORLD_SIZE, the GPU from LOCAL_RANK.

    No process group is needed: rank 0 waits for the other ranks' summary files, then merges.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"  # the local rank picks the GPU, never the global one
    kwargs.setdefault("wait_for_ranks", 7 * 24 * 3600.0 if world > 1 else 0.0)
    return prepare(root, out_dir, device=device, rank=rank, world_size=world, **kwargs)


# --------------------------------------------------------------------------------------------------
# CLI


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare", help="encode an image folder (one sub-folder per class) to SD-VAE latent moments",
        description="Centre-crop (ADM) every image of ROOT/<class>/, encode it and its mirror with the VAE and "
                    "write posterior moments to OUT. Under torchrun each rank encodes files[rank::world_size].")
    p.add_argument("root", help="image folder with one sub-folder per class (e.g. ImageNet train/)")
    p.add_argument("out", help="output directory for shards and manifest.json")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--vae", default=DEFAULT_VAE, help=f"Hub id or local save_pretrained directory (default {DEFAULT_VAE})")
    p.add_argument("--no-flip", action="store_true", help="do not add the horizontal mirror as a second entry")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call (x2 with flips)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="VAE precision")
    p.add_argument("--shard-size", type=int, default=5000, help="source images per shard")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, help="fail if more unreadable images than this")
    p.add_argument("--min-size", type=int, default=0,
                   help="skip images whose short side is below this (default 0: upscale them, as ADM does)")
    p.add_argument("--scale-factor", type=float, default=SD_SCALE_FACTOR)
    p.add_argument("--workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: $WORLD_SIZE or 1)")
    p.add_argument("--split", default="train", help="split name recorded in the manifest")
    p.add_argument("--no-resume", action="store_true", help="re-encode shards that already exist")
    p.add_argument("--merge", action="store_true", help="only write manifest.json from the finished ranks in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_prepare)
    return p


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.merge:
        m = merge(args.out, world_size=args.world_size, max_bad_fraction=args.max_bad_fraction)
        print(_describe(m, Path(args.out)))
        return 0
    env_world = int(os.environ.get("WORLD_SIZE", 1))
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", 0))
    world = args.world_size if args.world_size is not None else env_world
    device = _resolve_device(args.device)
    if device == "cuda" and world > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and args.rank is None
    s = prepare(args.root, args.out, image_size=args.image_size, vae=args.vae, hflip_copies=not args.no_flip,
                batch_size=args.batch_size, device=device, rank=rank, world_size=world, shard_size=args.shard_size,
                max_bad_fraction=args.max_bad_fraction, scale_factor=args.scale_factor, progress=not args.no_progress,
                min_size=args.min_size, dtype=args.dtype, num_workers=args.workers, resume=not args.no_resume,
                split=args.split, wait_for_ranks=7 * 24 * 3600.0 if under_torchrun and world > 1 else 0.0)
    c = s["counts"]
    print(f"rank {rank}/{world}: {c['images']} images -> {c['entries']} entries in {len(s['shards'])} shards "
          f"({c['bad']} unreadable, {c['too_small']} too small, {c['upscaled']} upscaled, "
          f"converted {c['converted'] or 'none'}) in {s['seconds']:.0f}s")
    if "manifest" in s:
        print(_describe(s["manifest"], Path(args.out)))
    return 0


def _describe(m: dict, out: Path) -> str:
    c = m["counts"]
    return (f"wrote {out / MANIFEST}: {c['entries']} entries ({c['images']} images + {c['flips']} flips) of "
            f"{m['num_classes']} classes, latents {tuple(m['latent_shape'])} at {m['resolution']}px, VAE {m['vae']}, "
            f"{c['bad']} unreadable, {c['too_small']} too small, {c['upscaled']} upscaled, converted {c['converted'] or 'none'}")
