"""Resident memory of a process that iterates over a prepared latent folder (`data.dataset: latents`).

For each size in `--mb`, builds a synthetic `sddit prepare` folder of ImageNet-256 latent shape
(moments float16 8x32x32 = 16 KiB per entry), then, in a fresh child process per row, reads
it the way `sddit train` does (EpochSampler -> LatentDataset.batch) as rank `--rank` of
`--world-size`, for the same number of batches whatever the size (`--batches`), and records the process's resident memory (VmRSS, split into anonymous and
file-backed pages, from /proc/self/status) before and while iterating, and its peak (VmHWM).
`--in-memory` adds a row for the old loader (every shard concatenated into one array) for contrast.

    python benchmarks/latent_memory.py --mb 100,400 --in-memory --json docs/results/latent_memory.json
    python benchmarks/latent_memory.py --smoke            # seconds; what the test suite runs

Linux only (it reads /proc). Figures are printed, never asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENTRY_SHAPE = (8, 32, 32)  # moments (mean, logvar) of a 4x32x32 latent: ImageNet-256 with the SD VAE
ENTRY_BYTES = int(np.prod(ENTRY_SHAPE)) * 2


def build_folder(root: Path, megabytes: float, shard_entries: int) -> dict:
    """A prepared folder in the `sddit prepare` format (latent_format.py) with random moments."""
    from sddit.data.latent_format import FORMAT, FORMAT_VERSION, MANIFEST, shard_name

    root.mkdir(parents=True, exist_ok=True)
    entries = max(1, int(megabytes * 2**20 / ENTRY_BYTES))
    rng = np.random.default_rng(0)
    shards = []
    for k, start in enumerate(range(0, entries, shard_entries)):
        n = min(shard_entries, entries - start)
        moments = rng.standard_normal((n, *ENTRY_SHAPE), dtype=np.float32).astype(np.float16)
        moments[:, 4:] = -4.0  # logvar
        name = shard_name(0, k)
        np.savez(
            root / name,
            moments=moments,
            labels=rng.integers(0, 1000, n),
            flips=np.zeros(n, bool),
            source=np.arange(start, start + n),
            meta=np.array("{}"),
        )
        shards.append({"file": name, "entries": n, "rank": 0})
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "latent_shape": [4, 32, 32],
        "resolution": 256,
        "class_names": [f"c{i}" for i in range(1000)],
        "scale_factor": 0.18215,
        "vae": "synthetic",
        "shards": shards,
        "counts": {"entries": entries},
    }
    (root / MANIFEST).write_text(json.dumps(manifest))
    return {
        "entries": entries,
        "shards": len(shards),
        "dataset_mb": sum((root / s["file"]).stat().st_size for s in shards) / 2**20,
    }


def rss() -> dict[str, float]:
    """This process's resident memory in MiB: total, anonymous, file-backed, and the peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def child(args: argparse.Namespace) -> dict:
    """One epoch of this rank's batches; resident memory sampled after every batch."""
    import torch

    from sddit.data import EpochSampler, LatentDataset

    torch.set_num_threads(1)
    before = rss()
    t0 = time.perf_counter()
    if args.mode == "mmap":
        ds = LatentDataset(args.folder)
        n = len(ds)
    else:  # the loader before memory-mapping: every shard in one in-memory array
        from sddit.data.latent_format import read_manifest

        m = read_manifest(args.folder)
        arrays = [np.load(Path(args.folder) / sh["file"]) for sh in m["shards"]]
        moments = torch.from_numpy(np.concatenate([a["moments"] for a in arrays]))
        n = len(moments)
    opened = rss()
    sampler = EpochSampler(n, args.batch, seed=0, rank=args.rank, world_size=args.world_size)
    torch.manual_seed(0)
    worst = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    rows = 0
    for _ in range(args.batches):  # the same number of batches for every size (small datasets: several epochs)
        idx = sampler.next()
        if args.mode == "mmap":
            z, _ = ds.batch(idx)
        else:
            z = moments[idx].float()
        rows += len(z)
        now = rss()
        worst = {k: max(worst[k], now[k]) for k in worst}
    return {
        "mode": args.mode,
        "rank": args.rank,
        "world_size": args.world_size,
        "global_batch": args.batch,
        "batches": args.batches,
        "epochs": round(args.batches * args.batch / n, 2),
        "rows_read": rows,
        "seconds": round(time.perf_counter() - t0, 2),
        "rss_start_mb": round(before["VmRSS"], 1),
        "rss_after_open_mb": round(opened["VmRSS"], 1),
        "rss_max_while_iterating_mb": round(worst["VmRSS"], 1),
        "anon_max_mb": round(worst["RssAnon"], 1),
        "file_max_mb": round(worst["RssFile"], 1),
        "peak_mb": round(rss()["VmHWM"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", default="100,400", help="dataset sizes in MiB, comma-separated (default 100,400)")
    p.add_argument("--shard-entries", type=int, default=2500, help="entries per shard (default 2500, ~40 MiB)")
    p.add_argument("--batch", type=int, default=256, help="global batch (default 256, the ImageNet recipe)")
    p.add_argument(
        "--batches",
        type=int,
        default=400,
        help="batches read per row (default 400: ~4 epochs of 100 MiB, one of 400 MiB at batch 256)",
    )
    p.add_argument("--world-size", type=int, default=1, help="simulated ranks; this process reads rank --rank's rows")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--in-memory", action="store_true", help="also measure the old in-memory loader")
    p.add_argument("--dir", default=None, help="where to build the folder (default: a temporary directory)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--smoke", action="store_true", help="8 and 24 MiB datasets, for the test suite")
    p.add_argument("--child", choices=("mmap", "memory"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0
    if not Path("/proc/self/status").exists():
        raise SystemExit("error: this benchmark reads /proc/self/status (Linux only)")
    if args.smoke:
        args.mb, args.shard_entries, args.batch, args.batches = "8,24", 400, 64, 24

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import run_child, write_result

    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sddit-latent-mem-"))
    modes = ["mmap", "memory"] if args.in_memory else ["mmap"]
    rows = []
    try:
        for mb in (float(v) for v in str(args.mb).split(",")):
            folder = tmp / f"latents-{mb:g}mb"
            info = build_folder(folder, mb, args.shard_entries)
            for mode in modes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    "--folder",
                    str(folder),
                    "--batch",
                    str(args.batch),
                    "--batches",
                    str(args.batches),
                    "--world-size",
                    str(args.world_size),
                    "--rank",
                    str(args.rank),
                ]
                rows.append({**info, **run_child(cmd, f"{mode} iteration")})
            shutil.rmtree(folder)
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{ENTRY_SHAPE} float16 moments per entry, {args.shard_entries} per shard; {args.batches} batches at global "
        f"batch {args.batch} as rank {args.rank} of {args.world_size}; resident memory in MiB"
    )
    print(
        "| dataset MiB | loader | epochs | rows read | RSS before | RSS max while iterating | of which anon / file | peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset_mb']:.0f} | {r['mode']} | {r['epochs']:g} | {r['rows_read']} | {r['rss_start_mb']:.0f} | "
            f"{r['rss_max_while_iterating_mb']:.0f} | {r['anon_max_mb']:.0f} / {r['file_max_mb']:.0f} | "
            f"{r['peak_mb']:.0f} |"
        )
    if args.json:
        write_result(args.json, sys.argv, entry_shape=list(ENTRY_SHAPE), shard_entries=args.shard_entries, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
