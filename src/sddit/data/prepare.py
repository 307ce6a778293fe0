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

The layout of OUT is described in `latent_format.py`. Rank r of W takes files[r::W] of the sorted file list, writes only files named after its own rank,
and replaces each atomically (temporary file + `os.replace`), so ranks never write the same file and
an interrupted run leaves no half-written shard. A re-run skips shards already written with the
same settings and the same source files (`resume=True`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..models.vae import DEFAULT_VAE, load_vae, vae_downsample, vae_reference
from ..runtime import atomic_write
from .image_folder import load_image, scan_image_folder
from .latent_format import FORMAT, FORMAT_VERSION, MANIFEST, SD_SCALE_FACTOR, shard_name, summary_name

_BAD_EXAMPLES = 5


@dataclass
class PrepareOptions:
    """How `prepare` encodes a folder (the `sddit prepare` flags of the same names)."""

    image_size: int = 256
    vae: str = DEFAULT_VAE  # Hub id or local save_pretrained directory
    hflip_copies: bool = True  # also encode each image's mirror, as a separate entry
    batch_size: int = 32  # images per VAE call
    device: str = "cpu"
    shard_size: int = 5000  # source images per shard
    max_bad_fraction: float = 0.01  # more unreadable images than this stops the run
    scale_factor: float = SD_SCALE_FACTOR
    min_size: int = 0  # reject images whose short side is below this instead of upscaling them
    dtype: str = "float32"  # VAE precision
    num_workers: int = 4  # image decoding threads
    resume: bool = True  # keep shards already written with the same settings and sources
    split: str = "train"  # recorded in the manifest
    local_files_only: bool = False  # Hub VAE: never download


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


def _write_json(path: Path, obj: dict) -> None:
    with atomic_write(path, fsync=True) as f:
        f.write((json.dumps(obj, indent=1) + "\n").encode())


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


def _too_many_bad(which: str, fraction: float, examples: list[str]) -> DataError:
    """The one error for too many unreadable images, per rank or for the merged run."""
    ex = f", e.g. {'; '.join(examples[:3])}" if examples else ""
    return DataError(f"{which} are unreadable (more than --max-bad-fraction {fraction:g}){ex}")


class _Encoder:
    """One rank's encoding job: the VAE, the image loader threads, the running counts."""

    def __init__(self, root: Path, files: list[Path], labels: list[int], mine: list[int], opts: PrepareOptions,
                 rank: int, bar):
        self.root, self.files, self.labels, self.opts, self.rank, self.bar = root, files, labels, opts, rank, bar
        self.dtype = getattr(torch, opts.dtype) if isinstance(opts.dtype, str) else opts.dtype
        self.vae = load_vae(opts.vae, opts.device, self.dtype, local_files_only=opts.local_files_only)
        self.factor = vae_downsample(self.vae)
        if opts.image_size % self.factor:
            raise DataError(f"image size {opts.image_size} is not divisible by the VAE's downsampling factor {self.factor}")
        size = opts.image_size // self.factor
        self.latent_shape = [int(self.vae.config.latent_channels), size, size]
        self.num_mine = len(mine)
        self.bad_limit = opts.max_bad_fraction * len(mine)
        self.counts = _add_counts(_empty_counts(), {"files": len(mine)})
        self.bad_examples: list[str] = []
        self.pool = ThreadPoolExecutor(opts.num_workers) if opts.num_workers > 0 else None

    def _load(self, idx: list[int]):
        fn = lambda i: load_image(self.files[i], self.opts.image_size, self.opts.min_size)  # noqa: E731
        return self.pool.map(fn, idx) if self.pool is not None else map(fn, idx)

    def check_bad(self, extra_bad: int = 0, extra_examples: list[str] | None = None) -> None:
        bad = self.counts["bad"] + extra_bad
        if bad > self.bad_limit:
            raise _too_many_bad(f"{bad} of rank {self.rank}'s {self.num_mine} images in {self.root}",
                                self.opts.max_bad_fraction, self.bad_examples + (extra_examples or []))

    def encode_shard(self, idx: list[int]) -> tuple[dict[str, np.ndarray], dict, list[str]]:
        """Arrays of one shard, its counts and its unreadable files; images load one batch ahead."""
        o = self.opts
        sc, bad = _empty_counts(), []
        moments, labs, flips, srcs = [], [], [], []
        batches = [idx[i : i + o.batch_size] for i in range(0, len(idx), o.batch_size)]
        pending = self._load(batches[0]) if batches else None
        for b, bidx in enumerate(batches):
            results = list(pending)
            pending = self._load(batches[b + 1]) if b + 1 < len(batches) else None  # prefetch
            good = self._sort_batch(bidx, results, sc, bad)
            if good:
                m, f = encode_moments(self.vae, np.stack([arr for _, arr in good]), o.device, self.dtype, o.hflip_copies)
                reps = 2 if o.hflip_copies else 1
                moments.append(m)
                flips.append(f)
                labs.append(np.tile(np.array([self.labels[i] for i, _ in good], dtype=np.int64), reps))
                srcs.append(np.tile(np.array([i for i, _ in good], dtype=np.int64), reps))
            if self.bar is not None:
                self.bar.update(len(bidx))
        n_entries = sum(len(a) for a in srcs)
        sc.update(files=len(idx), images=n_entries // (2 if o.hflip_copies else 1), entries=n_entries,
                  flips=int(sum(int(f.sum()) for f in flips)))
        sc["converted"] = dict(sorted(sc["converted"].items()))
        c, h, w = self.latent_shape
        arrays = {
            "moments": np.concatenate(moments) if moments else np.zeros((0, 2 * c, h, w), np.float16),
            "labels": np.concatenate(labs) if labs else np.zeros(0, np.int64),
            "flips": np.concatenate(flips) if flips else np.zeros(0, bool),
            "source": np.concatenate(srcs) if srcs else np.zeros(0, np.int64),
        }
        return arrays, sc, bad

    def _sort_batch(self, bidx: list[int], results, sc: dict, bad: list[str]) -> list[tuple[int, np.ndarray]]:
        """Count converted / too-small / unreadable images of a batch; return the usable (index, crop)."""
        good = []
        for i, (arr, info) in zip(bidx, results):
            if info["mode"] is not None and info["mode"] != "RGB" and arr is not None:
                sc["converted"][info["mode"]] = sc["converted"].get(info["mode"], 0) + 1
            if arr is None and info["too_small"]:
                sc["too_small"] += 1
            elif arr is None:
                sc["bad"] += 1
                bad.append(f"{self.files[i].relative_to(self.root).as_posix()}: {info['error']}")
                self.check_bad(sc["bad"], bad)
            else:
                sc["upscaled"] += int(info["upscaled"])
                good.append((i, arr))
        return good

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _clean_old_outputs(out_dir: Path, rank: int, num_shards: int) -> None:
    """Each rank removes only its own outputs of earlier runs; rank 0 also the manifest, so a partial
    re-run is never mistaken for a finished one."""
    for old in out_dir.glob(f"rank-{rank:03d}-of-*.json"):
        old.unlink()
    if rank == 0 and (out_dir / MANIFEST).exists():
        (out_dir / MANIFEST).unlink()
    current = {shard_name(rank, k) for k in range(num_shards)}
    for old in out_dir.glob(f"shard-r{rank:03d}-*.npz"):
        if old.name not in current:
            old.unlink()


def prepare(root: str | Path, out_dir: str | Path, opts: PrepareOptions | None = None, *, rank: int = 0,
            world_size: int = 1, progress: bool = True, wait_for_ranks: float = 0.0, **options: Any) -> dict:
    """Encode this rank's slice (files[rank::world_size]) of ROOT into shards in OUT; returns its summary.

    `opts` (or keyword arguments naming its fields) say how. Rank 0 writes manifest.json when every
    rank's summary is present, waiting up to `wait_for_ranks` seconds for them (torchrun); otherwise
    run `merge(out_dir)` after all ranks finish. See the module docstring.
    """
    opts = replace(opts or PrepareOptions(), **options)
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world size {world_size}")
    if opts.image_size < 1 or opts.batch_size < 1 or opts.shard_size < 1:
        raise DataError("image size, batch size and shard size must be positive")
    root, out_dir = Path(root).expanduser(), Path(out_dir).expanduser()
    files, labels, classes = scan_image_folder(root)
    mine = list(range(rank, len(files), world_size))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), unit="img", desc=f"prepare rank {rank}/{world_size}", dynamic_ncols=True)
    enc = _Encoder(root, files, labels, mine, opts, rank, bar)
    vae_scale = getattr(enc.vae.config, "scaling_factor", None)
    if vae_scale is not None and abs(vae_scale - opts.scale_factor) > 1e-6 and rank == 0:
        print(f"note: scale factor {opts.scale_factor} differs from the VAE config's scaling_factor {vae_scale}",
              file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_shards = math.ceil(len(mine) / opts.shard_size)
    _clean_old_outputs(out_dir, rank, num_shards)
    settings = {"image_size": opts.image_size, "vae": vae_reference(opts.vae), "hflip": bool(opts.hflip_copies),
                "min_size": int(opts.min_size), "latent_shape": enc.latent_shape,
                "dtype": str(enc.dtype).removeprefix("torch.")}
    shards: list[dict] = []
    t0 = time.perf_counter()
    try:
        for k in range(num_shards):
            idx = mine[k * opts.shard_size : (k + 1) * opts.shard_size]
            name = shard_name(rank, k)
            key = dict(settings, start=k * opts.shard_size, stop=k * opts.shard_size + len(idx),
                       sources=_digest(root, [files[i] for i in idx], [labels[i] for i in idx]))
            meta = _read_shard_meta(out_dir / name) if opts.resume and (out_dir / name).exists() else None
            if meta is not None and meta.get("key") == key:  # finished by an earlier run: reuse
                sc = meta["counts"]
                enc.bad_examples.extend(meta.get("bad_examples", []))
                if bar is not None:
                    bar.update(len(idx))
            else:
                arrays, sc, bad = enc.encode_shard(idx)
                arrays["meta"] = np.array(json.dumps({"key": key, "counts": sc, "bad_examples": bad[:_BAD_EXAMPLES]}))
                with atomic_write(out_dir / name, fsync=True) as f:
                    np.savez(f, **arrays)
                enc.bad_examples.extend(bad)
            enc.counts = _add_counts(enc.counts, {k2: v for k2, v in sc.items() if k2 != "files"})
            enc.check_bad()
            shards.append({"file": name, "entries": sc["entries"], "rank": rank})
    finally:
        enc.close()
        if bar is not None:
            bar.close()

    summary = {
        "format": FORMAT, "version": FORMAT_VERSION, "rank": rank, "world_size": world_size, "split": opts.split,
        "source_root": str(root), "num_files_total": len(files), "sources": _digest(root, files, labels),
        "class_names": classes, "empty_classes": [classes[c] for c in sorted(set(range(len(classes))) - set(labels))],
        "scale_factor": float(opts.scale_factor), "resolution": opts.image_size, "downsample": enc.factor,
        **{k: v for k, v in settings.items() if k != "image_size"},
        "counts": enc.counts, "bad_examples": enc.bad_examples[:_BAD_EXAMPLES], "shards": shards,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_json(out_dir / summary_name(rank, world_size), summary)
    if rank == 0:
        missing = _wait_for_ranks(out_dir, world_size, wait_for_ranks)
        if not missing:
            summary["manifest"] = merge(out_dir, max_bad_fraction=opts.max_bad_fraction)
        elif progress:
            print(f"rank 0 done; ranks {missing} still running: after they finish, run "
                  f"`sddit prepare {root} {out_dir} --merge` to write {MANIFEST}", file=sys.stderr)
    return summary


def _wait_for_ranks(out_dir: Path, world_size: int, seconds: float) -> list[int]:
    """Ranks whose summary is still missing after waiting up to `seconds` for them."""
    deadline = time.monotonic() + seconds
    while True:
        missing = [r for r in range(world_size) if not (out_dir / summary_name(r, world_size)).exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


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
        raise _too_many_bad(f"{counts['bad']} of {counts['files']} images", max_bad_fraction,
                            [e for s in summaries for e in s["bad_examples"]])
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
