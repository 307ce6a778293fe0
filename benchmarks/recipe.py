"""The default run's recipe, found by a sweep: which training setting gives the best FID-1k for the
training time `sddit train` can afford on 2 CPU cores.

Hypotheses (written before the runs): today's default (constant lr 1e-3, EMA 0.999, ~2 epochs) is
far from converged, so at a fixed 10-minute training budget (2 threads) the gains should come from
spending the budget on more steps of a cheaper model rather than fewer steps of a wider one, and from
guidance at sampling time (CFG); a learning-rate decay should help only if it is short and late
(a first 1-seed pass at commit 3b31bfc found a full cosine decay *worse* than a constant lr at this
length: FID-1k 86.7 vs 75.2), EMA length, P_mean, Adam's beta2 and the batch size should matter less.

Each row trains DiT on Fashion-MNIST (the `fmnist_dit` preset: width 192, depth 6, patch 4, exact
GELU) for the steps that fit 10 minutes of 2-thread training on this CPU, from eager ms/step measured
alone on the machine (265 ms at batch 64, scaled for other shapes by the ratios measured with tanh
GELU: 0.50x at batch 32, 1.85x at batch 128, 0.49x at width 128, 0.63x at width 256 x depth 8 x
patch 7 = 16 tokens). Every row is scored without guidance and with CFG 2 (FID-1k: 1,000
class-balanced samples, seeds 0..999, EDM Heun 18 steps, vs the fixed 1,000 test images, bf16
Inception); the cfg rows vary only the evaluation of one trained model.

    python benchmarks/recipe.py --seeds 0                 # all rows, one seed (~3 h on 2 cores)
    python benchmarks/recipe.py --rows const,wsd --seeds 0,1,2
    python benchmarks/recipe.py --smoke                   # seconds-long check (used by the tests)

Writes docs/results/recipe.{json,md,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sweep import Row, parse_args, run_grid, select

CFG = [{}, {"cfg_scale": 2.0}]
N = 2250  # steps of the base row in the 10-minute budget
ROWS = [
    Row("const", [f"train.max_steps={N}"], "constant lr 1e-3 (today's schedule)", evals=CFG),
    Row("const-lr2e-3", [f"train.max_steps={N}", "train.lr=2e-3"], "higher constant lr", evals=CFG),
    Row("wsd", [f"train.max_steps={N}", "train.lr_schedule=linear", "train.lr_decay_start=0.8"],
        "constant, then a linear decay to 0 over the last 20%", evals=CFG),
    Row("ema0.9995", [f"train.max_steps={N}", "train.ema_decay=0.9995"], "longer EMA", evals=CFG),
    Row("ema0.998", [f"train.max_steps={N}", "train.ema_decay=0.998"], "shorter EMA", evals=CFG),
    Row("w128", ["train.max_steps=4600", "model.hidden_size=128", "model.num_heads=4"],
        "narrower model, ~2x the steps", evals=CFG),
    Row("p7-w256-d8", ["train.max_steps=3550", "model.patch_size=7", "model.hidden_size=256", "model.num_heads=8",
                       "model.depth=8"], "16 tokens of 7x7: wider, deeper, cheaper per image", evals=CFG),
    Row("b32", ["train.max_steps=4500", "train.batch_size=32"], "batch 32, 2x the steps", evals=CFG),
    Row("b128-lr2e-3", ["train.max_steps=1215", "train.batch_size=128", "train.lr=2e-3"],
        "batch 128 (lr x2), ~half the steps", evals=CFG),
    Row("pmean-0.8", [f"train.max_steps={N}", "diffusion.P_mean=-0.8"], "noise levels shifted up", evals=CFG),
    Row("beta2-0.99", [f"train.max_steps={N}", "train.betas=0.9,0.99"], "Adam beta2 0.99 (faster second moment)",
        evals=CFG),
]


def main() -> None:
    p = parse_args(__doc__, "recipe")
    args = p.parse_args()
    rows, config, fid_samples = select(ROWS, args.rows), "fmnist_dit", args.fid_samples
    if args.smoke:
        config, fid_samples = "digits_tiny", 20
        rows = [Row("a", ["train.max_steps=4", "train.batch_size=16"], "smoke"),
                Row("b", ["train.max_steps=4", "train.batch_size=16", "train.lr_schedule=cosine"], "smoke",
                    evals=[{}, {"steps": 3}])]
        args.rows = ""
    run_grid(rows, [int(s) for s in args.seeds.split(",")], config=config, out=Path(args.out), work=Path(args.work),
             name="recipe", workers=args.workers, fid_samples=fid_samples, argv=sys.argv, baseline="const",
             title="Default-run recipe: DiT on Fashion-MNIST, 10 min of 2-thread training per row, FID-1k",
             row_major=True)


if __name__ == "__main__":
    main()
