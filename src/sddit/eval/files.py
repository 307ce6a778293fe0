"""Scoring image files against a reference, the way ADM's evaluator does (`sddit eval --samples
PATH --ref PATH`): sample and reference sets as folders or ``.npz`` files streamed in batches,
reference statistics files, and a cache of reference features. docs/evaluation.md has the protocol.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data.image_folder import center_crop_arr
from ..errors import DataError
from ..runtime import atomic_write
from .inception import (
    POOL_DIM,
    SPATIAL_DIM,
    InceptionFeatures,
    find_inception_weights,
    inception_id,
    inception_logit_weight,
    load_inception,
)
from .metrics import feature_stats, frechet_distance, inception_score, precision_recall
from .npz_files import corrupt, npz_array_info, npz_batches, npz_keys

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1


class ImageSet:
    """An image folder (PNG/JPEG, recursive, sorted by path) or an ``.npz`` with ``arr_0`` uint8 NHWC.

    Images are read in batches (:meth:`batches`), never all at once: an ``.npz`` member is streamed
    from the zip like ADM's evaluator does, so 50k 256px samples need memory for one batch only.
    Folder images are converted to RGB (grey repeated, which is also what the Inception input
    does). With ``size`` (a reference scored against a run's samples), every folder image that is
    not ``size`` x ``size`` is centre-cropped and resized to it with ADM's ``center_crop_arr``, so
    a folder of photos of mixed sizes (ImageNet val) is a reference as ADM's reference batches are
    made; without it, every image must have the first one's size. An ``.npz`` is used as stored.
    """

    def __init__(self, path: str | Path, size: int | None = None) -> None:
        self.path = Path(path).expanduser()
        self.size = size
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self.files:
                raise DataError(f"{self.path} holds no PNG/JPEG images")
            self.count = len(self.files)
        elif self.path.is_file():
            self.kind = "npz"
            self.files = []
            self.count, self.image_shape = npz_array_info(self.path, "arr_0")
            if len(self.image_shape) != 3 or self.image_shape[-1] not in (1, 3):
                raise DataError(
                    f"{self.path}: arr_0 has shape {(self.count, *self.image_shape)}, expected "
                    "(N, H, W, 3) uint8 images"
                )
        else:
            raise DataError(
                f"{self.path} does not exist: pass an image folder or an .npz with arr_0 (N, H, W, 3) uint8"
            )

    def __len__(self) -> int:
        return self.count

    def square_size(self) -> int | None:
        """The side of the set's (first) image when it is square, else None: what a reference is cropped to."""
        if self.kind == "npz":
            h, w = self.image_shape[:2]
        else:
            from PIL import Image

            try:
                with Image.open(self.files[0]) as img:
                    w, h = img.size
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                return None  # batches() names the unreadable file
        return h if h == w else None

    def describe(self) -> str:
        return f"{self.count} images ({self.kind} {self.path})"

    def fingerprint(self) -> str:
        """Cheap identity for reference caches: names and sizes of the files (not their bytes)."""
        h = hashlib.sha1()
        if self.size is not None and self.kind == "folder":
            h.update(f"centre-crop {self.size}\n".encode())
        if self.kind == "npz":
            h.update(f"{self.path.name}:{self.path.stat().st_size}:{self.count}".encode())
        else:
            for p in self.files:
                h.update(f"{p.relative_to(self.path)}:{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 (b, H, W, C) numpy batches in order."""
        if self.kind == "npz":
            yield from npz_batches(self.path, "arr_0", batch_size)
            return
        from PIL import Image

        size = None
        for start in range(0, self.count, batch_size):
            batch = []
            for p in self.files[start : start + batch_size]:
                try:
                    with Image.open(p) as img:
                        rgb = img.convert("RGB")
                        if self.size is not None and rgb.size != (self.size, self.size):
                            arr = center_crop_arr(rgb, self.size)
                        else:
                            arr = np.asarray(rgb)
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                    # DecompressionBombError: a small file that claims billions of pixels
                    raise DataError(
                        f"cannot read image {p} ({type(e).__name__}: {' '.join(str(e).split())[:200]}): "
                        "remove it from the folder or regenerate it"
                    ) from None
                size = size or arr.shape
                if arr.shape != size:
                    raise DataError(
                        f"{p} is {arr.shape[1]}x{arr.shape[0]} but the first image of {self.path} is "
                        f"{size[1]}x{size[0]}: all images of a sample set must have one size (a "
                        "reference folder is centre-cropped to the samples' size)"
                    )
                batch.append(np.ascontiguousarray(arr))
            yield np.stack(batch)


class Reference:
    """What ``--ref`` gives: images (folder / ``arr_0``), precomputed statistics, or both.

    ADM's reference batches (e.g. ``VIRTUAL_imagenet256_labeled.npz``) hold both: 10k images in
    ``arr_0`` plus ``mu``/``sigma`` and ``mu_s``/``sigma_s``. As in ADM's evaluator, stored
    statistics are used for FID/sFID and the images for precision/recall. A stats-only file
    (``mu``/``sigma``) gives FID (and sFID with ``mu_s``/``sigma_s``); precision/recall then need
    reference features, which our ``--cache-ref`` files carry (``pool_features``) and others do not.
    """

    def __init__(self, path: str | Path, size: int | None = None) -> None:
        self.path = Path(path).expanduser()
        self.images: ImageSet | None = None
        self.stats: dict[str, np.ndarray] = {}
        self.features: np.ndarray | None = None
        if not self.path.exists():
            raise DataError(
                f"{self.path} does not exist: pass an image folder, an .npz of images (arr_0) or a "
                "reference-statistics .npz (mu, sigma)"
            )
        if self.path.is_dir():
            self.images = ImageSet(self.path, size)
            return
        keys = npz_keys(self.path)
        if "mu" in keys and "sigma" in keys:
            try:
                with np.load(self.path) as data:
                    for k in ("mu", "sigma", "mu_s", "sigma_s"):
                        if k in data.files:
                            self.stats[k] = data[k].astype(np.float64)
                    if "pool_features" in data.files:
                        self.features = data["pool_features"]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise corrupt(self.path, e) from None
            self._check_stats()
        if "arr_0" in keys:
            self.images = ImageSet(self.path)
        if not self.stats and self.images is None:
            raise DataError(f"{self.path} holds {keys}: expected arr_0 (images) or mu/sigma (statistics)")
        if ("mu_s" in self.stats) != ("sigma_s" in self.stats):
            self.stats.pop("mu_s", None)
            self.stats.pop("sigma_s", None)

    def _check_stats(self) -> None:
        """Statistics that cannot give a number are refused before any Inception pass."""
        for mu_key, sigma_key, dim in (("mu", "sigma", POOL_DIM), ("mu_s", "sigma_s", SPATIAL_DIM)):
            if mu_key not in self.stats or sigma_key not in self.stats:
                continue
            mu, sigma = self.stats[mu_key], self.stats[sigma_key]
            if mu.shape != (dim,) or sigma.shape != (dim, dim):
                raise DataError(
                    f"{self.path}: {mu_key}/{sigma_key} have shapes {mu.shape} and {sigma.shape}, expected "
                    f"({dim},) and ({dim}, {dim}) (Inception features): pass statistics computed with the "
                    "same Inception, e.g. from `sddit eval --samples IMAGES --ref IMAGES --cache-ref`"
                )
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise DataError(
                    f"{self.path}: {mu_key}/{sigma_key} contain NaN or inf, so FID would be NaN: recompute the "
                    "reference statistics"
                )
            problem = _not_a_covariance(sigma)
            if problem:
                raise DataError(
                    f"{self.path}: {sigma_key} is not a covariance matrix ({problem}), so FID would be "
                    "meaningless (e.g. negative): recompute the reference statistics"
                )

    def describe(self) -> str:
        parts = []
        if self.images is not None:
            parts.append(f"{self.images.count} images")
        if self.stats:
            parts.append("statistics " + "/".join(k for k in ("mu", "sigma", "mu_s", "sigma_s") if k in self.stats))
        return f"{' + '.join(parts)} ({self.path})"


def default_ref_cache_path(ref: str | Path) -> Path:
    """Where ``--cache-ref`` puts a reference's statistics by default: ``REF.stats.npz`` beside it."""
    p = Path(ref).expanduser()
    name = p.name if p.is_dir() else p.stem
    return p.with_name(f"{name}.stats.npz")


def _extract(extractor: InceptionFeatures, images: ImageSet, spatial: bool, desc: str, progress: bool):
    """(pool, spatial or None) features of an image set, with a progress bar in images."""
    from tqdm.auto import tqdm

    pools, spats = [], []
    with tqdm(total=images.count, desc=desc, unit="img", disable=not progress) as bar:
        for batch in images.batches(extractor.batch_size):
            pool, spat = extractor.forward_batch(batch, spatial)
            pools.append(pool.float().cpu().numpy())
            if spat is not None:
                spats.append(spat.float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(pools), (np.concatenate(spats) if spatial else None)


def _load_ref_cache(path: Path, ref: Reference, ref_id: str, resize: str) -> dict | None:
    """Statistics (+ pool features) of ``ref`` from an earlier ``--cache-ref``, if they match."""
    if not path.is_file() or ref.images is None:
        return None
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
            if (
                meta.get("version") != CACHE_VERSION
                or meta.get("inception") != ref_id
                or meta.get("resize") != resize
                or meta.get("source") != ref.images.fingerprint()
            ):
                return None
            return {k: data[k] for k in data.files if k != "meta"}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def _save_ref_cache(path: Path, arrays: dict, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return path


def reference_statistics(
    ref: str | Path,
    extractor: InceptionFeatures,
    weights: Path,
    cache_dir: Path | None = None,
    progress: bool = True,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, number of reference images or None) of a reference for generator FID (`train.fid_ref`).

    A file with statistics (mu/sigma: ADM's reference batches, pytorch-fid files, our caches) gives
    them as they are; otherwise the Inception statistics of all its images are computed once and
    cached in `cache_dir` (keyed on the files, `size`, the Inception file and its precision). `size`:
    the samples' side, to which the images of a reference folder are centre-cropped (`ImageSet`).
    """
    reference = Reference(ref, size)
    count = reference.images.count if reference.images is not None else None
    if "mu" in reference.stats:
        return reference.stats["mu"], reference.stats["sigma"], count
    ref_id = f"{inception_id(weights)}:{extractor.precision}"
    cache = None
    if cache_dir is not None:
        name = str(reference.path.resolve()) + (f":{size}" if size else "")
        key = hashlib.sha1(name.encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"fidref-{key}.npz"
        cached = _load_ref_cache(cache, reference, ref_id, extractor.resize)
        if cached is not None and "mu" in cached:
            return cached["mu"].astype(np.float64), cached["sigma"].astype(np.float64), count
    pool, _ = _extract(extractor, reference.images, False, "inception (reference)", progress)
    mu, sigma = feature_stats(pool)
    if cache is not None:
        _save_ref_cache(
            cache,
            {"mu": mu, "sigma": sigma},
            {
                "version": CACHE_VERSION,
                "inception": ref_id,
                "resize": extractor.resize,
                "source": reference.images.fingerprint(),
                "path": str(reference.path),
                "num_images": count,
            },
        )
    return mu, sigma, count


def evaluate_sample_files(
    samples: str | Path,
    ref: str | Path,
    *,
    inception: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    cache_ref: str | Path | None = None,
    progress: bool = True,
    k: int = 3,
    precision: str = "fp32",
) -> dict:
    """FID, sFID, precision/recall (k=3) and, when the Inception has logits, IS of image files.

    ``samples``: image folder or ``.npz`` (``arr_0``). ``ref``: the same, or a statistics ``.npz``
    (``mu``/``sigma``, optionally ``mu_s``/``sigma_s``), or both in one file (ADM's reference
    batches). ``cache_ref``: a path to save the reference's statistics and pool features to (and
    reuse them from, when they were computed from the same files with the same Inception). Metrics
    that cannot be computed are None, with the reason in ``notes``.
    """
    sample_set = ImageSet(samples)
    if sample_set.count < 2:
        raise DataError(f"{sample_set.path} holds {sample_set.count} image(s); FID needs at least 2")
    reference = Reference(ref, sample_set.square_size())  # a folder is cropped to the samples' size
    weights = find_inception_weights(inception)
    model = load_inception(weights)
    extractor = InceptionFeatures(model, device=device, batch_size=batch_size, precision=precision)
    spatial = extractor.has_spatial
    logit_w = inception_logit_weight(model)
    notes: list[str] = []
    if not spatial:
        notes.append("sFID: n/a (this Inception file lacks the layer layout the spatial features need)")

    t0 = time.perf_counter()
    pool, spat = _extract(extractor, sample_set, spatial, "inception (samples)", progress)

    # Reference: statistics and pool features, from a cache, the files, or both.
    ref_id = f"{inception_id(weights)}:{precision}"  # bf16 and fp32 features are cached apart
    ref_stats: dict[str, np.ndarray] = dict(reference.stats)
    ref_feats = reference.features
    cache_path = Path(cache_ref).expanduser() if cache_ref is not None else None
    cached = _load_ref_cache(cache_path, reference, ref_id, extractor.resize) if cache_path else None
    num_ref_images = reference.images.count if reference.images is not None else None
    if cached is not None:
        ref_feats = cached.get("pool_features")
        for key in ("mu", "sigma", "mu_s", "sigma_s"):
            if key in cached and key not in ref_stats:
                ref_stats[key] = cached[key].astype(np.float64)
        notes.append(f"reference statistics and features reused from {cache_path}")
    elif reference.images is not None:
        ref_pool, ref_spat = _extract(extractor, reference.images, spatial, "inception (reference)", progress)
        ref_feats = ref_pool
        if "mu" not in ref_stats:
            ref_stats["mu"], ref_stats["sigma"] = feature_stats(ref_pool)
        if ref_spat is not None and "mu_s" not in ref_stats:
            ref_stats["mu_s"], ref_stats["sigma_s"] = feature_stats(ref_spat)
        if reference.stats:
            notes.append(
                "FID/sFID use the statistics stored in the reference file (as ADM's evaluator does); "
                "precision/recall use its images"
            )
        if cache_path is not None:
            arrays = {**ref_stats, "pool_features": ref_pool.astype(np.float32)}
            meta = {
                "version": CACHE_VERSION,
                "inception": ref_id,
                "resize": extractor.resize,
                "source": reference.images.fingerprint(),
                "path": str(reference.path),
                "num_images": reference.images.count,
            }
            _save_ref_cache(cache_path, arrays, meta)
            notes.append(f"reference statistics saved to {cache_path}")
    elif cache_path is not None:
        notes.append("--cache-ref ignored: the reference is already a statistics file")

    mu, sigma = feature_stats(pool)
    if ref_stats["mu"].shape != mu.shape:
        raise DataError(
            f"the reference statistics of {reference.path} are {ref_stats['mu'].shape[0]}-dimensional but "
            f"this Inception gives {mu.shape[0]} features: compute both with the same Inception"
        )
    fid = frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])
    if not math.isfinite(fid):
        raise DataError(
            f"FID is {fid} ({sample_set.path} vs {reference.path}): the features or statistics hold NaN "
            "or inf; check the images and recompute the reference statistics"
        )
    sfid = None
    if spat is not None and "mu_s" in ref_stats:
        sfid = frechet_distance(*feature_stats(spat), ref_stats["mu_s"], ref_stats["sigma_s"])
    elif spatial:
        notes.append("sFID: n/a (the reference statistics have no mu_s/sigma_s)")

    precision = recall = None
    num_ref_feats = None if ref_feats is None else len(ref_feats)
    if ref_feats is None:
        notes.append("precision/recall: n/a (they need reference images, not only statistics)")
    elif len(ref_feats) <= k or len(pool) <= k:
        notes.append(f"precision/recall: n/a (need more than k={k} images in each set)")
    else:
        precision, recall = precision_recall(ref_feats, pool, k=k, batch_size=2000, device=device)

    inception_score_mean = inception_score_std = None
    if logit_w is None:
        notes.append("IS: n/a (the Inception file has no logits)")
    else:
        logits = torch.from_numpy(pool).double() @ logit_w.double().cpu().T
        splits = max(1, min(math.ceil(len(pool) / 5000), len(pool)))  # ADM: chunks of 5000 samples
        inception_score_mean, inception_score_std = inception_score(logits, splits=splits, from_logits=True)

    return {
        "fid": fid,
        "sfid": sfid,
        "precision": precision,
        "recall": recall,
        "inception_score": inception_score_mean,
        "inception_score_std": inception_score_std,
        "num_samples": sample_set.count,
        "num_reference_images": num_ref_images,
        "num_reference_features": num_ref_feats,
        "reference_stats": "file" if reference.stats else ("cache" if cached is not None else "computed"),
        "samples": str(sample_set.path),
        "ref": str(reference.path),
        "inception": str(weights),
        "resize": extractor.resize,
        "k": k,
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _not_a_covariance(sigma: np.ndarray, rtol: float = 1e-3) -> str | None:
    """What stops `sigma` being a covariance (symmetric, positive semi-definite), up to the rounding
    of statistics stored in low precision (`rtol` of its largest eigenvalue); None when it is one."""
    s = torch.from_numpy(np.asarray(sigma, dtype=np.float64))
    scale = float(s.abs().max()) or 1.0
    asym = float((s - s.T).abs().max())
    if asym > rtol * scale:
        return f"not symmetric: entries differ from their transpose by up to {asym:.3g}"
    eig = torch.linalg.eigvalsh((s + s.T) / 2)
    lowest, highest = float(eig[0]), float(eig[-1])
    if lowest < -rtol * max(highest, 0.0):
        return f"not positive semi-definite: its smallest eigenvalue is {lowest:.3g}"
    return None
