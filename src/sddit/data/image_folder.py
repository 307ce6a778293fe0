"""Reading an ImageNet-style image folder: the class layout, and ADM's centre crop of each image."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")


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
    # Symlinked folders are followed (datasets are often assembled from links), each real folder and
    # each real file once across ALL classes: a link back up the tree (`ln -s . loop`, `ln -s .. up`)
    # would otherwise count images again (two such links never end), and under another class's
    # label. Reached again within its class it is skipped; reached from another class it is an error.
    seen: dict[tuple[int, int], tuple[int, Path]] = {}  # (device, inode) -> (class, first path)

    def first_visit(path: Path, label: int, what: str) -> bool:
        st = os.stat(path)
        first = seen.setdefault((st.st_dev, st.st_ino), (label, path))
        if first[0] != label:
            raise DataError(f"image folder {root}: the {what} {path} (class {classes[label]!r}) is {first[1]} "
                            f"(class {classes[first[0]]!r}) reached again (through a link), so its images would count "
                            "under both classes: an image belongs to one class; remove the link")
        return first[1] == path

    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            if not first_visit(Path(dirpath), label, "folder"):
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if path.exists() and not first_visit(path, label, "image"):  # a dangling link is counted as bad
                    continue
                files.append(path)
                labels.append(label)
    if not files:
        raise DataError(f"image folder {root} has {len(classes)} class sub-folders but no images "
                        f"(extensions accepted: {exts})")
    return files, labels, classes


def load_image(path: Path, image_size: int, min_size: int) -> tuple[np.ndarray | None, dict]:
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
