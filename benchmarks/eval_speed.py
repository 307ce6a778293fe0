"""Inception features in bf16 vs fp32: the speed-up, and what it does to FID.

The default run spends a large share of its 15 minutes on Inception features (2,000 images of
299x299 through Inception-v3 on 2 CPU cores). `eval.inception_precision=bf16` runs the network under
bf16 autocast. This script measures, on the same two disjoint sets of 1,000 real Fashion-MNIST test
images (positions 0-999 and 1000-1999 of the fixed permutation FID references use), the time per
image of each path and FID(set A, set B) under each, and the relative FID difference (our bar:
within 0.5%).

    python benchmarks/eval_speed.py                      # 2 x 1000 images, both precisions (~6 min)
    python benchmarks/eval_speed.py --num 200            # quicker, noisier
    python benchmarks/eval_speed.py --smoke --json /tmp/e.json   # seconds-long check (used by the tests)
    python benchmarks/eval_speed.py --batch-sweep 8,16,32,50 --rounds 2 --json docs/results/inception_batch.json

`--batch-sweep` times bf16 features of one set of images at each Inception batch size instead,
the sizes alternating over `--rounds`, and checks every size gives the features of the first (a
batch's images do not interact: any difference is the kernels'). On a 2-core CPU a smaller batch
keeps a layer's activations in cache.

Writes docs/results/eval_speed.json (with provenance) unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=1000, help="images per set")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--json", default="docs/results/eval_speed.json")
    p.add_argument("--smoke", action="store_true", help="8 digits images per set: checks the script runs")
    p.add_argument("--batch-sweep", default="", help="comma-separated Inception batch sizes to time (bf16)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --batch-sweep")
    args = p.parse_args()

    import torch

    from sddit.data import load_digits, load_fashion_mnist
    from sddit.eval import InceptionFeatures, fid_from_features, load_inception
    from sddit.seeding import reference_subset

    torch.set_flush_denormal(True)
    ds = load_digits("test") if args.smoke else load_fashion_mnist(args.root, "test")
    num = 8 if args.smoke else args.num
    idx = reference_subset(len(ds), 2 * num)
    sets = ds.images[idx[:num]], ds.images[idx[num:]]
    model = load_inception()
    if args.batch_sweep:
        return batch_sweep(args, model, sets[0])
    rows = []
    for precision in ("fp32", "bf16"):
        extractor = InceptionFeatures(model, batch_size=args.batch, precision=precision)
        extractor(sets[0][: min(4, num)])  # warm-up (oneDNN picks its kernels on the first call)
        t0 = time.perf_counter()
        feats = [extractor(s) for s in sets]
        seconds = time.perf_counter() - t0
        fid = fid_from_features(*feats)
        rows.append(
            {"precision": precision, "fid": fid, "seconds": seconds, "ms_per_image": 1000 * seconds / (2 * num)}
        )
        print(
            f"{precision}: FID {fid:.3f}, {1000 * seconds / (2 * num):.1f} ms/image ({seconds:.0f} s for {2 * num})",
            flush=True,
        )
    fp32, bf16 = rows
    summary = {
        "images_per_set": num,
        "dataset": "digits" if args.smoke else "fashion_mnist test",
        "threads": torch.get_num_threads(),
        "rows": rows,
        "speedup": fp32["seconds"] / bf16["seconds"],
        "fid_rel_diff": (bf16["fid"] - fp32["fid"]) / fp32["fid"],
    }
    print(
        f"bf16 is {summary['speedup']:.2f}x faster; FID differs by {100 * summary['fid_rel_diff']:+.2f}% "
        f"(bar: within 0.5%)"
    )
    write_result(args.json, sys.argv, **summary)


def batch_sweep(args, model, images) -> None:
    """Seconds for the bf16 features of `images` at each batch size, alternating over rounds."""
    import numpy as np
    import torch

    from sddit.eval import InceptionFeatures

    sizes = [int(b) for b in args.batch_sweep.split(",")]
    seconds: dict[int, list[float]] = {b: [] for b in sizes}
    first, max_diff, rel_l2 = None, {}, {}
    for r in range(args.rounds):
        for b in sizes if r % 2 == 0 else sizes[::-1]:
            extractor = InceptionFeatures(model, batch_size=b, precision="bf16")
            extractor(images[:b])  # warm-up: oneDNN picks its kernels per input shape
            t0 = time.perf_counter()
            feats = extractor(images)
            seconds[b].append(time.perf_counter() - t0)
            first = feats if first is None else first
            max_diff[b] = max(max_diff.get(b, 0.0), float(np.abs(feats - first).max()))
            rel = float((np.linalg.norm(feats - first, axis=1) / np.linalg.norm(first, axis=1)).max())
            rel_l2[b] = max(rel_l2.get(b, 0.0), rel)  # per image, as the shipped reference's check
            print(f"round {r} batch {b}: {seconds[b][-1]:.1f} s for {len(images)} images", flush=True)
    rows = [
        {
            "batch": b,
            "seconds": seconds[b],
            "ms_per_image": 1000 * min(seconds[b]) / len(images),
            "max_abs_diff_vs_first": max_diff[b],
            "max_relative_l2_vs_first": rel_l2[b],
        }
        for b in sizes
    ]
    write_result(args.json, sys.argv, images=len(images), threads=torch.get_num_threads(), precision="bf16", rows=rows)


if __name__ == "__main__":
    main()
