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


if __name__ == "__main__":
    main()
