"""The default run's recipe, found by a sweep: which training setting gives the best FID-1k for the
training time `sddit train` can afford on 2 CPU cores.

Hypothesis (written before the runs): today's default (constant lr 1e-3, EMA 0.999, ~2 epochs) is
far from converged, so at a fixed 10-minute training budget (2 threads) the biggest gains should come
from a decaying learning rate and from spending the budget on more steps of a cheaper model rather
than fewer steps of a wider one; EMA length, P_mean and the batch size should matter less. Guidance
(CFG) at evaluation may lower FID-1k further at twice the sampling cost.

Each row trains DiT on Fashion-MNIST (the `fmnist_dit` preset) for the steps that fit 10 minutes of
2-thread training on this CPU, from eager ms/step measured alone on the machine: 310 ms at batch 64
(width 192, depth 6, patch 4), 155 at batch 32, 573 at batch 128, 442 at width 256, 153 at width 128,
238 at width 128 x depth 8, 196 at width 256 x depth 8 x patch 7 (16 tokens). FID-1k: 1,000
class-balanced samples (seeds 0..999), EDM Heun 18 steps, no guidance unless the eval column says so,
against the fixed 1,000 test images, bf16 Inception.

    python benchmarks/recipe.py --seeds 0                 # all rows, one seed (~2 h on 2 cores)
    python benchmarks/recipe.py --rows today,cosine --seeds 0,1,2
    python benchmarks/recipe.py --smoke                   # seconds-long check (used by the tests)

Writes docs/results/recipe.{json,md,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sweep import Row, parse_args, run_grid, select

COS = ["train.lr_schedule=cosine"]
ROWS = [
    Row("today", ["train.max_steps=2000"], "today's default recipe (constant lr 1e-3) at 2000 steps"),
    Row("cosine", [*COS, "train.max_steps=2000"], "cosine decay of the lr to 0",
        evals=[{}, {"cfg_scale": 1.5}, {"cfg_scale": 2.0}, {"steps": 12}, {"steps": 12, "cfg_scale": 1.5}]),
    Row("cosine-lr2e-3", [*COS, "train.max_steps=2000", "train.lr=2e-3"], "higher peak lr"),
    Row("cosine-lr5e-4", [*COS, "train.max_steps=2000", "train.lr=5e-4"], "lower peak lr"),
    Row("cosine-w128", [*COS, "train.max_steps=4000", "model.hidden_size=128", "model.num_heads=4"],
        "narrower model, 2x the steps"),
    Row("cosine-p7-w256-d8", [*COS, "train.max_steps=3150", "model.patch_size=7", "model.hidden_size=256",
                              "model.num_heads=8", "model.depth=8"], "16 tokens of 7x7: wider, deeper, cheaper"),
    Row("cosine-b32", [*COS, "train.max_steps=4000", "train.batch_size=32"], "batch 32, 2x the steps"),
    Row("cosine-b128-lr2e-3", [*COS, "train.max_steps=1080", "train.batch_size=128", "train.lr=2e-3"],
        "batch 128 (lr x2), half the steps"),
    Row("cosine-ema0.9995", [*COS, "train.max_steps=2000", "train.ema_decay=0.9995"], "longer EMA"),
    Row("cosine-ema0.998", [*COS, "train.max_steps=2000", "train.ema_decay=0.998"], "shorter EMA"),
    Row("cosine-pmean-0.8", [*COS, "train.max_steps=2000", "diffusion.P_mean=-0.8"], "noise levels shifted up"),
    Row("cosine-w128-d8", [*COS, "train.max_steps=2600", "model.hidden_size=128", "model.num_heads=4",
                           "model.depth=8"], "narrower and deeper"),
    Row("cosine-w256", [*COS, "train.max_steps=1400", "model.hidden_size=256", "model.num_heads=8"],
        "wider model, fewer steps"),
]


def main() -> None:
    p = parse_args(__doc__, "recipe")
    args = p.parse_args()
    rows, config, fid_samples = select(ROWS, args.rows), "fmnist_dit", args.fid_samples
    if args.smoke:
        config, fid_samples = "digits_tiny", 20
        rows = [Row("a", ["train.max_steps=4", "train.batch_size=16"], "smoke"),
                Row("b", ["train.max_steps=4", "train.batch_size=16", *COS], "smoke", evals=[{}, {"steps": 3}])]
        args.rows = ""
    run_grid(rows, [int(s) for s in args.seeds.split(",")], config=config, out=Path(args.out), work=Path(args.work),
             name="recipe", workers=args.workers, fid_samples=fid_samples, argv=sys.argv, baseline="today",
             title="Default-run recipe: DiT on Fashion-MNIST, 10 min of 2-thread training per row, FID-1k")


if __name__ == "__main__":
    main()
