"""The on-disk format of `sddit prepare` output, read by training (`latents.py`) and written by
`prepare.py`: its constants and the manifest reader, in one place both import.

Layout of a prepared folder:

    shard-r{rank:03d}-{k:05d}.npz   moments float16 (N, 2C, h, w), labels int64 (N,), flips bool (N,),
                                    source int64 (N,) (index into the sorted file list), meta (JSON str)
    rank-{rank:03d}-of-{world:03d}.json   one rank's counts and shard list, written when it finishes
    manifest.json                   written only by rank 0 (or `merge`) once every rank has finished

Reading without loading (format version 1, unchanged): `np.savez` stores every member of a shard
uncompressed (ZIP_STORED), so the bytes of `moments.npy` lie in the .npz file as they would in a
.npy file, after the zip's local header and the .npy header. `stored_npy_members` finds where each
array's data starts, and `latents.LatentDataset` memory-maps the shard and views the arrays in
place: nothing is read until a batch asks for its rows. A shard written compressed
(`np.savez_compressed`) cannot be mapped and is refused with the fix. Old folders need no conversion.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class NpyMember:
    """Where one array of an uncompressed .npz lies: its data starts `offset` bytes into the file."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature, ..., name length, extra length


def stored_npy_members(path: str | Path, names: tuple[str, ...]) -> dict[str, NpyMember]:
    """Data offset, dtype and shape of the members `names` (without `.npy`) of an `np.savez` file.

    Reads the zip directory and the .npy headers only. Raises DataError for a truncated or corrupt
    file, a missing or compressed member, or an array that cannot be viewed in place (Fortran
    order, Python objects).
    """
    path = Path(path)
    out: dict[str, NpyMember] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
            infos = {i.filename: i for i in zf.infolist()}
            for name in names:
                info = infos.get(f"{name}.npy")
                if info is None:
                    raise DataError(f"shard {path} has no '{name}' array: re-run `sddit prepare` for it")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(f"shard {path} is compressed (np.savez_compressed) and cannot be memory-mapped: "
                                    "re-write it with np.savez or re-run `sddit prepare`")
                f.seek(info.header_offset)
                sig, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                if sig != b"PK\x03\x04":
                    raise zipfile.BadZipFile("bad local header")
                start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                f.seek(start)
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                member = NpyMember(f.tell(), np.dtype(dtype), tuple(int(s) for s in shape))
                if fortran or member.dtype.hasobject:
                    raise DataError(f"shard {path}: '{name}' is not a C-ordered numeric array: re-run `sddit prepare`")
                if member.offset - start + member.nbytes != info.file_size:
                    raise zipfile.BadZipFile(f"'{name}' holds {info.file_size} bytes, its header says more")
                out[name] = member
    except (OSError, ValueError, EOFError, struct.error, zipfile.BadZipFile) as e:
        raise DataError(f"shard {path} is truncated or corrupt ({type(e).__name__}): delete it and re-run "
                        "`sddit prepare` for its rank") from None
    return out
