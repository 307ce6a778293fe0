"""The on-disk format of `sddit prepare` output, read by training (`latents.py`) and written by
`prepare.py`: its constants and the manifest reader, in one place both import.

Layout of a prepared folder:

    shard-r{rank:03d}-{k:05d}.npz   moments float16 (N, 2C, h, w), labels int64 (N,), flips bool (N,),
                                    source int64 (N,) (index into the sorted file list), meta (JSON str)
    rank-{rank:03d}-of-{world:03d}.json   one rank's counts and shard list, written when it finishes
    manifest.json                   written only by rank 0 (or `merge`) once every rank has finished
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

FORMAT = "sddit-latents"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SD_SCALE_FACTOR = 0.18215


def shard_name(rank: int, k: int) -> str:
    return f"shard-r{rank:03d}-{k:05d}.npz"


def summary_name(rank: int, world_size: int) -> str:
    return f"rank-{rank:03d}-of-{world_size:03d}.json"


_REQUIRED = ("latent_shape", "class_names", "scale_factor", "shards", "counts", "resolution", "vae")
_REQUIRED_COUNTS = ("entries",)  # what training reads; prepare writes the other counts for people


def read_manifest(root: str | Path) -> dict:
    """manifest.json of a prepared latent directory, validated; DataError with the fix otherwise."""
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not path.exists():
        hint = (" (rank summaries are there: run `sddit prepare ROOT OUT --merge` after all ranks finish)"
                if any(root.glob("rank-*-of-*.json")) else " (run `sddit prepare IMAGE_FOLDER OUT` first)")
        raise DataError(f"no {MANIFEST} in {root}: not a prepared latent directory{hint}")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}; re-run `sddit prepare ... --merge`") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise DataError(f"{path} is not an sddit latent manifest (format {fmt!r}): re-run `sddit prepare`")
    missing = [k for k in _REQUIRED if k not in m]
    counts, shards = m.get("counts"), m.get("shards")
    if isinstance(counts, dict):
        missing += [f"counts.{k}" for k in _REQUIRED_COUNTS if not isinstance(counts.get(k), int)]
    elif "counts" not in missing:
        missing.append("counts (a mapping)")
    if isinstance(shards, list):
        if not all(isinstance(sh, dict) and isinstance(sh.get("file"), str) and isinstance(sh.get("entries"), int)
                   for sh in shards):
            missing.append("shards[].file/entries")
    elif "shards" not in missing:
        missing.append("shards (a list)")
    shape = m.get("latent_shape")
    if "latent_shape" not in missing and not (isinstance(shape, list) and len(shape) == 3
                                              and all(isinstance(v, int) and v > 0 for v in shape)):
        missing.append("latent_shape (three positive integers)")
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: re-run `sddit prepare ... --merge`")
    return m
