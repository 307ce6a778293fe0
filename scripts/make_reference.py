"""Write the Inception features of a preset's FID reference into the package
(`src/sddit/eval/references/`, see `sddit/eval/shipped.py`), so a fresh machine's first run skips
that pass. Run it again whenever the preset's reference, the Inception file or the preprocessing
changes (the package then simply stops using the stale file: its metadata no longer match).

    python scripts/make_reference.py                  # the default run's: fmnist_dit, 1,000 test images
    python scripts/make_reference.py --config fmnist32_dit
"""

from __future__ import annotations

import argparse
import time

from sddit.config import load_config
from sddit.data import build_dataset
from sddit.eval import find_inception_weights, shipped
from sddit.eval.generator import inception_extractor
from sddit.eval.metrics import feature_stats, frechet_distance
from sddit.seeding import reference_subset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="fmnist_dit")
    p.add_argument("--num", type=int, default=1000, help="reference images (default 1000: the default run's FID-1k)")
    args = p.parse_args()
    cfg = load_config(args.config, [])
    weights = find_inception_weights(cfg.eval.inception or None)
    extractor = inception_extractor(cfg, weights, "cpu")
    split = cfg.eval.reference
    ds = build_dataset(cfg.data.dataset, cfg.data.root, split, cfg.data.resolution)
    images = ds.images[reference_subset(len(ds), min(args.num, len(ds)))]
    path = shipped.path_for(cfg.data.dataset, cfg.data.resolution, split)
    t0 = time.perf_counter()
    meta = shipped.write(path, images, extractor, weights)
    seconds = time.perf_counter() - t0
    print(f"wrote {path} ({meta['num_images']} images, {path.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s): {meta}")
    # What storing float16 costs: the Frechet distance between the statistics of the stored features
    # and of a fresh full pass (the same network, machine and images; 0 up to round-off).
    fresh = feature_stats(extractor(images))
    stored = feature_stats(shipped.load(path, ds.images, len(images), extractor, weights))
    print(f"Frechet distance, stored vs fresh statistics: {frechet_distance(*stored, *fresh):.2e}")


if __name__ == "__main__":
    main()
