"""Reading image arrays out of ``.npz`` files (ADM's sample and reference batches) without loading
them whole: the member's header is parsed, then images stream in batches; a truncated or corrupt
file is a one-line DataError naming it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError


def npz_member(path: Path, key: str):
    """(zipfile, open member, shape, fortran_order, dtype) of ``key`` in an ``.npz``, header read."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not an .npz file ({e})") from None
    name = f"{key}.npy"
    if name not in zf.namelist():
        keys = [n.removesuffix(".npy") for n in zf.namelist()]
        zf.close()
        raise DataError(f"{path} has no {key!r} (it holds {keys}): expected arr_0 (N, H, W, 3) uint8 images")
    try:
        f = zf.open(name)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        zf.close()
        raise corrupt(path, e) from None
    return zf, f, shape, fortran, dtype


def corrupt(path: Path, e: Exception) -> DataError:
    return DataError(
        f"{path} is truncated or corrupt ({type(e).__name__}: {' '.join(str(e).split())[:200]}): "
        "regenerate or copy it again"
    )


def npz_array_info(path: Path, key: str) -> tuple[int, tuple[int, ...]]:
    zf, f, shape, _, dtype = npz_member(path, key)
    f.close()
    zf.close()
    if dtype != np.uint8 or len(shape) < 1:
        raise DataError(f"{path}: {key} is {dtype} {shape}, expected uint8 (N, H, W, 3) images")
    return int(shape[0]), tuple(int(s) for s in shape[1:])


def npz_batches(path: Path, key: str, batch_size: int) -> Iterator[np.ndarray]:
    zf, f, shape, fortran, dtype = npz_member(path, key)
    try:
        if fortran:  # rare; not streamable in row order
            data = np.load(path)[key]
            for start in range(0, len(data), batch_size):
                yield np.ascontiguousarray(data[start : start + batch_size])
            return
        per_image = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            try:
                raw = f.read(n * per_image)  # the zip's CRC is checked when the member's end is read
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise corrupt(path, e) from None
            if len(raw) != n * per_image:
                raise DataError(
                    f"{path} is truncated: {key} declares {shape[0]} images but its data ends after "
                    f"{start + len(raw) // per_image}; regenerate or copy it again"
                )
            yield np.frombuffer(bytearray(raw), dtype=dtype).reshape(n, *shape[1:])  # writable for torch
    except (ValueError, zipfile.BadZipFile) as e:  # the non-streamed (Fortran-order) path
        raise corrupt(path, e) from None
    finally:
        f.close()
        zf.close()


def npz_keys(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist()]
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not an .npz file ({e})") from None
