"""The SD-DiT study: which parts of SD-DiT help or hurt on Fashion-MNIST, at an equal number of
training images, with the seed spread of every row.

Hypotheses (written before the runs; SPEC section 9 lists the suspects):
- H1 the discriminative loss dominates the encoder: with lambda_d = 1 its gradient on the encoder
  blocks is ~15x the generative loss's, so the encoder (and the embedders the decoder shares) is
  trained for alignment, not denoising. Then FID improves as lambda_d falls (rows lambda*), and
  gradient clipping (clip1) helps by bounding the discriminative pull.
- H2 masking costs generative signal at this scale (20% of the patches get no generative loss): the
  mask0 row beats sddit, and lambda0 (masking, no alignment) trails split (no masking, no alignment).
- H3 the split architecture itself costs nothing: split ~ dit.
- H4 the teacher's conditioning at sigma_min = 0.002 (c_noise ~4 sd below the training range) makes
  its targets poor: cond (c_noise floored at exp(P_mean - 2 P_std) = 0.027) beats sddit.
- H5 aligning the last encoder block leaves nothing free for denoising: block2 (head on block 2 of 4,
  and a teacher half as deep) beats sddit.
- H6 the DINO-head details matter little (dino-head, cls-temp, zeros), and the decaying lr that
  DINO pairs with its momentum schedule (cosine) matters little at this length.

Every row trains the Fashion-MNIST preset's backbone (depth 6, width 192, patch 4; split rows 4
encoder + 2 decoder blocks, K = 1024 prototypes) for 1000 steps of batch 64 (64k images), seeds 0-2,
each in its own 1-thread process (2 at a time), and logs per-term gradient norms every 100 steps.
FID-1k: 1,000 class-balanced samples (seeds 0..999), EDM Heun 18 steps, no guidance, vs the fixed
1,000 test images, bf16 Inception. ms/step is measured inside those runs (1 thread, 2 processes
sharing the 2 cores): compare it between rows, not with 2-thread figures.

Second round (the `r2-` rows, 2026-11-29), at the recipe the default run now trains with (recipe.py's
PRESET3: width 128, 4 heads, batch 32, lr 3e-3 with a linear decay over the last 20%, 24 Heun steps,
CFG 3 in sigma (0.3, 5]); 2,400 steps (76.8k images) per row, 3 seeds, SD-DiT unmasked as the
fmnist_sddit preset now trains; gradient norms every 400 steps. The first round's FIDs (~110) sat far
from where the recipe now ends (~39), so its answers may not hold there. Hypotheses, before the runs:
- R1 per update, SD-DiT is no better than DiT (first round: mask0 -3.1 +- 3.8 vs dit, within spread):
  r2-sddit ~ r2-dit. If SD-DiT is not ahead per update, no step-cost saving can make it win per
  second, and the study's answer is "the discriminative loss does not speed up learning at this scale".
- R2 the split backbone with [CLS] costs nothing: r2-lambda0 ~ r2-dit.
- R3 (H1 again) a lighter discriminative weight is better: r2-lambda0.1 <= r2-sddit.
- R4 (H5 again) the head on block 2 of 4 frees the last encoder blocks for denoising and halves the
  teacher's forward: r2-block2 <= r2-sddit, at a lower ms/step.
- R5 (H4 again) the teacher's conditioning inside the trained range helps: r2-cond <= r2-sddit.

Reading after the runs (docs/results/ablation_r2.md; seed 3 of r2-dit and r2-block2 added after the
first three to check the one consistent difference): R1 held: SD-DiT 67.4 +- 0.9 against DiT
67.2 +- 5.5 (paired over 3 seeds -1.2 +- 3.4). R2 held (lambda0 65.9). R3, R5: lambda_d 0.1 (66.8)
and the conditioning floor (67.4) equal SD-DiT. R4: block2 65.1 is ahead of DiT on 3 seeds of 4
(paired -2.0 +- 0.7) but not of SD-DiT (-1.5 +- 3.4 over 3 seeds): the lead to repeat, not a
default. Per update, nothing here separates SD-DiT from DiT at 76.8k images.
The repeat (seeds 4 and 5 of r2-dit and r2-block2, written before they ran): if block2's lead is
real, it is ahead of DiT by ~2 on both new seeds and the paired mean over 6 seeds stays beyond 2
s.e.; if it was a chance of 4 seeds, the mean moves toward 0 and its s.e. grows. It held: ahead by
3.7 and 0.5 on seeds 4 and 5, paired -2.05 +- 0.62 over 6 seeds (docs/results/ablation_r2.md).
Next, seeds 3 and 4 of r2-sddit (written before they ran): if the head on block 2 beats the head on
block 4, r2-block2 is ahead of r2-sddit on both and their paired difference over 5 seeds passes 2 s.e.
Ahead on both (3.4, 9.6), but -3.5 +- 2.4 over 5 seeds (seed 2: +5.2): not separated.

Third round (the `r3-` rows, 2026-12-04), after a review found the discriminative loss nearly dead
(SPEC section 10): the [CLS] teacher is one vector for every image at step 0 (adaLN-Zero), centering
makes it uniform, and its term stays at ln K; the patch task is easy (no mask, teacher at sigma_min).
Same recipe as the second round (R2: 2,400 steps of batch 32, unmasked), 4 seeds, and every run keeps
its final weights for the linear probe (benchmarks/probe.py). Hypotheses, before the runs:
- L1 (liveness, read from each run's monitors, not FID) r3-sddit's teacher_entropy_image ends within
  1% of ln K = 6.93; r3-mean's (the image-level token = the mean of the patch tokens) ends well below
  (< 0.9 ln K) with more than one prototype in use: the image-level term exists only in r3-mean.
- T1 a live image-level term is what the paper's "inter-image alignment" needs: if it speeds up
  learning here, r3-mean beats r3-sddit and r3-dit by more than 2 s.e. paired, and its encoder beats
  DiT's in the probe. If it only regularises the encoder towards class structure without helping the
  denoiser at 76.8k images, the probe separates it and FID does not.
- T2 a harder patch task (r3-shift: the teacher at SRA's t_S - U(0, 0.2) on the linear path instead
  of sigma_min) raises the patch loss and, if the easy task was the problem, lowers FID vs r3-sddit.
- T3 the alignment itself (r3-align, SRA's loss: student block 2 through an MLP projector, teacher's
  raw block-4 tokens at the shifted noise, smooth-L1 beta 0.05, weight 0.2) vs DINO's prototypes:
  SRA reports its gains at XL scale over hundreds of epochs; here we expect at most a small lead over
  DiT, and a probe at least DiT's.
- T4 all fixes together (r3-live: mean image token, shifted teacher, head on block 2, the second
  round's one lead) is the best SD-DiT row; the goal's first milestone is it ahead of r3-dit beyond
  2 s.e. paired over 4 seeds.
    python benchmarks/ablate.py --rows r3-dit,r3-sddit,r3-mean,r3-shift,r3-align,r3-live --seeds 0,1,2,3 \
        --keep-weights --baseline r3-dit

Fourth round (the `r4-` row, 2026-12-06): r3-mean made the image term live and cost 16.2 +- 3.1
FID paired, so the fmnist_sddit preset (image_token mean, lambda_d 1) trains a live but worse model.
The alignment that stayed level with DiT weighs 0.2. Hypotheses, before the runs:
- W1 the cost is the discriminative gradient's weight (lambda_d 1 against a denoising loss ~0.3),
  not its direction: at lambda_d 0.2 the mean-token SD-DiT is within 2 s.e. of DiT, paired over 4
  seeds, and its image term stays live (teacher_entropy_image ends < 0.9 ln K). If so the preset's
  lambda_d becomes 0.2; if it still costs beyond 2 s.e., the direction hurts and the weight only
  scales it.
- DiT runs again beside it: r3-dit ran on another CPU, and the default run's FID moved ~1 between
  CPUs with the same seed, so the pairing uses this machine's DiT.
    python benchmarks/ablate.py --rows r3-dit,r4-mean-l0.2 --seeds 0,1,2,3 --baseline r3-dit

Fifth round (the `r5-` rows, 2026-12-06): the one SD-DiT row ever ahead of DiT beyond 2 s.e.,
r2-block2 (-2.05 +- 0.62 over 6 seeds, head on encoder block 2), trained a [CLS] image term that was
dead for a quarter to two thirds of its run: a lead, but not of a live configuration. Hypotheses,
before the runs (r3-dit's seeds 0-3 of the fourth round's work folder are the baseline; DiT's code
has not changed since, and it reproduced to the 5th decimal there):
- X1 the lead was the patch term's, at block 2: with no image term at all (`r5-b2-patch`: head on
  block 2, image_token none, lambda_d 1; the one term left is live) SD-DiT is ahead of r3-dit paired
  over seeds 0-3 beyond 2 s.e. If it is level, r2-block2's lead came with the dead [CLS] term or by
  chance (a last-bit change moves an SD-DiT run by up to 3 FID here).
- X2 both terms live, head on block 2 (`r5-b2-mean0.2`: mean image token, lambda_d 0.2): level with
  DiT like r4-mean-l0.2; ahead only if X1 holds (lambda_d 0.2 also scales the patch term by 1/5).
- Liveness: each row's terms end below 0.9 ln K. Probe: if X1 holds, r5-b2-patch's encoder is ahead
  of DiT's (spatial, sigma 0.5) beyond 2 s.e.; the linear probe then shows what the lead is made of.
    python benchmarks/ablate.py --rows r5-b2-patch,r5-b2-mean0.2 --seeds 0,1,2,3 --baseline r3-dit \
        --keep-weights --work <the fourth round's work folder>
The repeat (seeds 4 and 5 of r3-dit and r5-b2-patch, written after seeds 0-3 gave r5-b2-patch
59.73, 63.96, 59.07, 60.49 against r3-dit's 66.53, 64.27, 75.14, 62.71: ahead on all four, paired
-6.35 +- 3.52, 1.8 s.e.): if X1 holds, r5-b2-patch is ahead on both new seeds and the paired mean
over 6 seeds passes 2 s.e.; if the lead leaned on DiT's seed-2 outlier (75.1), it shrinks toward 0.
    python benchmarks/ablate.py --rows r3-dit,r5-b2-patch --seeds 4,5 --baseline r3-dit --keep-weights
After the runs (docs/results/ablation_r5.md): X1 held, narrowly: r5-b2-patch ahead on all 6 seeds
(58.13 and 63.39 on seeds 4-5 against DiT's 64.03 and 63.58), -5.25 +- 2.44 paired, 2.15 s.e.; X2
held (-0.47 +- 2.88, 4 seeds); every term live; the probe found no encoder difference (+0.1 +- 0.4).

Sixth round (the `r6-` row, 2026-12-06): at equal wall-clock r5-b2-patch ended 11.7 FID behind DiT
(docs/results/convergence_r5.md), its step 1.67x DiT's side by side; the 1,024-prototype head (fp32
prototype layer, cross-entropy over B x T x K, student forward + backward and teacher) is most of
that cost, and the run used ~300 of the 1,024 prototypes. Hypotheses, before the run:
- Y1 a head of 256 prototypes (`r6-b2-patch-k256`, otherwise r5-b2-patch) keeps the per-update lead:
  paired against r3-dit over seeds 0-3 it is ahead, and level with r5-b2-patch within the spread.
- Y2 its step, alone on the machine (`benchmarks/step_time.py --objectives dit,sddit --set
  train.compile=false --set train.num_threads=1` with the row's keys), falls from ~1.44x DiT's toward
  ~1.25x.
    python benchmarks/ablate.py --rows r6-b2-patch-k256 --seeds 0,1,2,3 --baseline r3-dit \
        --work <the fourth round's work folder>
After the run (docs/results/ablation_r6.md): Y1 refuted: 70.98, 63.51, 63.12, 67.25, level with DiT
(-0.95 +- 3.90 paired) and behind r5-b2-patch (+5.4 +- 2.4); the term stays live (0.19 ln K) but uses
~93 prototypes, not ~300. Y2 in part: 1.76x -> 1.41x DiT's step alone (the 1,024 row is 1.76x
today, not the 1.44x assumed above).

Seventh round (the `r7-` row, 2026-12-06): the lead needs the 1,024-prototype head, and the head is
the cost. `sddit.head_token_fraction` runs the head and the patch loss on a random subset of each
image's patch tokens (the same positions for the teacher), keeping K. Hypotheses, before the run:
- Z1 with a quarter of the tokens (`r7-b2-patch-t0.25`: 12 of 49 per image, otherwise
  r5-b2-patch) the per-update lead mostly stays: ahead of r3-dit paired over seeds 0-3, within the
  spread of r5-b2-patch (the targets are as rich; neighbouring patches carry overlapping signal).
- Z2 its step alone falls from 1.76x DiT's to ~1.3x (the head's cost scales with its tokens).
    python benchmarks/ablate.py --rows r3-dit,r5-b2-patch,r7-b2-patch-t0.25 --seeds 0,1,2,3 --baseline r3-dit
After the run (docs/results/ablation_r7.md): Z1 refuted: 64.10, 70.43, 67.68, 68.87, level with DiT
(+0.60 +- 3.37 paired), behind r5-b2-patch on all 4 seeds (+6.96 +- 0.98), the term as live (0.27 ln
K); Z2 held: 1.36x DiT's step alone. The lead needs the full head.

Eighth round (the `r8-` rows, 2026-12-06): does r5-b2-patch's per-update lead last to the default
run's length? Both rows at 8,160 steps (3.4x the fifth round's; the default run's recipe and
scoring, 1-thread eager), seeds 0-1; r8-dit seed 0 should reproduce recipe_p3's p3-preset (39.4).
Hypotheses, before the run: W1 SD-DiT is ahead of DiT on both seeds; W2 by less than at 2,400 steps
in FID (about -2 to -3: differences compress as both models improve).
    python benchmarks/ablate.py --rows r8-dit-8160,r8-b2-patch-8160 --seeds 0,1 --baseline r8-dit-8160
After the run (docs/results/ablation_r8.md): W1 refuted: 39.08 / 39.80 against DiT's 39.44 / 37.97,
+0.73 +- 1.10 paired: level; the 2,400-step lead does not last. r8-dit seed 0 reproduces p3-preset.

    python benchmarks/ablate.py --rows r2-dit,r2-sddit,r2-lambda0,r2-lambda0.1,r2-block2,r2-cond --seeds 0,1,2
    python benchmarks/ablate.py --seeds 0,1,2             # the first round's rows (~5 h on 2 cores)
    python benchmarks/ablate.py --rows dit,sddit --seeds 0
    python benchmarks/ablate.py --smoke                    # seconds-long check (used by the tests)

Writes docs/results/ablation.{json,md,png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recipe import PRESET3
from sweep import Row, parse_args, run_grid, select

# the study's FID: no guidance; its lr and backbone: the Fashion-MNIST preset's when the study ran
# (constant 1e-3; width 192, 6 heads, batch 64)
COMMON = [
    "model.hidden_size=192",
    "model.num_heads=6",
    "train.batch_size=64",
    "train.max_steps=1000",
    "train.gradnorm_every=100",
    "eval.cfg_scale=1.0",
    "train.lr=1e-3",
    "train.lr_schedule=constant",
]
# SD-DiT rows start from the paper's mask ratio (the fmnist_sddit preset trains unmasked since this study)
SD = [*COMMON, "sddit.mask_ratio=0.2", "sddit.image_token=cls"]  # as they ran: the preset's token is mean since r3
# the second round: the default run's recipe, pinned (recipe.py), a third of its steps; unmasked
# lambda_d pinned at 1, the preset's value when these rounds ran (fmnist_sddit trains at 0.2 since 1709a2e)
R2 = [
    *PRESET3,
    "train.max_steps=2400",
    "train.gradnorm_every=400",
    "sddit.mask_ratio=0",
    "sddit.image_token=cls",
    "sddit.lambda_d=1",
]
ROWS = [
    Row("dit", [*COMMON, "objective=dit"], "DiT, the baseline (same depth and width, no split)", config="fmnist_dit"),
    Row("sddit", SD, "SD-DiT as specified: lambda_d 1, mask 0.2, teacher at sigma_min"),
    Row("lambda0", [*SD, "sddit.lambda_d=0"], "null: masking only, no discriminative loss"),
    Row(
        "split",
        [*COMMON, "objective=maskdit", "maskdit.mask_ratio=0", "maskdit.mae_loss_coef=0"],
        "null: DiT's loss on the split backbone, no mask, no head",
        config="fmnist_maskdit",
    ),
    Row("mask0", [*SD, "sddit.mask_ratio=0"], "null: discriminative loss, no masking"),
    Row("lambda0.1", [*SD, "sddit.lambda_d=0.1"], "lambda_d sweep"),
    Row("lambda0.01", [*SD, "sddit.lambda_d=0.01"], "lambda_d sweep"),
    Row("block2", [*SD, "model.head_block=2"], "head reads encoder block 2 of 4; teacher runs 2 blocks"),
    Row("cond", [*SD, "sddit.teacher_cond_sigma_min=0.027"], "teacher c_noise floored at exp(P_mean - 2 P_std)"),
    Row("clip1", [*SD, "train.grad_clip=1.0"], "gradient clipping at norm 1 (REPA)"),
    Row(
        "dino-head",
        [*SD, "model.head_last_init=pytorch", "sddit.freeze_last_layer_steps=100"],
        "DINO's prototype init and last-layer freeze",
    ),
    Row("cls-temp", [*SD, "sddit.teacher_temp_cls=0.04"], "[CLS] teacher temperature fixed at 0.04 (iBOT)"),
    Row("cosine", [*SD, "train.lr_schedule=cosine"], "lr decays on a cosine, as DINO pairs with its momentum"),
    Row("zeros", [*SD, "model.mask_token=zeros"], "masked decoder positions filled with zeros"),
    # Second round, at the default run's recipe (PRESET3), 2,400 steps of batch 32, SD-DiT unmasked
    Row("r2-dit", [*R2, "objective=dit"], "DiT, the baseline", config="fmnist_dit"),
    Row("r2-sddit", R2, "SD-DiT as the fmnist_sddit preset trains it: lambda_d 1, no mask, head on block 4 of 4"),
    Row("r2-lambda0", [*R2, "sddit.lambda_d=0"], "null: the split backbone with [CLS], no discriminative loss"),
    Row("r2-lambda0.1", [*R2, "sddit.lambda_d=0.1"], "lambda_d 0.1"),
    Row("r2-block2", [*R2, "model.head_block=2"], "head reads encoder block 2 of 4; teacher runs 2 blocks"),
    Row("r2-cond", [*R2, "sddit.teacher_cond_sigma_min=0.027"], "teacher c_noise floored at exp(P_mean - 2 P_std)"),
    # Third round: the same recipe, the fixes that make the discriminative loss carry signal
    Row("r3-dit", [*R2, "objective=dit"], "DiT, the baseline", config="fmnist_dit"),
    Row(
        "r3-sddit",
        [*R2, "sddit.image_token=cls"],
        "SD-DiT as the second round: [CLS] image term (dead), teacher at sigma_min",
    ),
    Row("r3-mean", [*R2, "sddit.image_token=mean"], "image-level token = mean of the patch tokens (alive from step 0)"),
    Row(
        "r3-shift",
        [*R2, "sddit.image_token=cls", "sddit.teacher_sigma=shift"],
        "teacher at SRA's t_S - U(0, 0.2) on the linear path, not sigma_min",
    ),
    Row(
        "r3-align",
        [
            *R2,
            "sddit.disc_loss=align",
            "model.head_block=2",
            "sddit.teacher_head_block=4",
            "sddit.teacher_sigma=shift",
            "sddit.lambda_d=0.2",
        ],
        "SRA's alignment: block-2 projector -> teacher's raw block-4 tokens, smooth-L1, weight 0.2",
    ),
    Row(
        "r3-live",
        [*R2, "sddit.image_token=mean", "sddit.teacher_sigma=shift", "model.head_block=2"],
        "all fixes: mean image token, shifted teacher, head on block 2",
    ),
    # Fourth round: r3-mean's live image term at the alignment's weight
    Row(
        "r4-mean-l0.2",
        [*R2, "sddit.image_token=mean", "sddit.lambda_d=0.2"],
        "mean image token (live) at lambda_d 0.2, a fifth of r3-mean's",
    ),
    # Fifth round: r2-block2's lead (head on block 2) with only live terms
    Row(
        "r5-b2-patch",
        [*R2, "model.head_block=2", "sddit.image_token=none"],
        "head on block 2, patch term only (no image-level term: every term live)",
    ),
    Row(
        "r5-b2-mean0.2",
        [*R2, "model.head_block=2", "sddit.image_token=mean", "sddit.lambda_d=0.2"],
        "head on block 2, mean image token, lambda_d 0.2 (both terms live)",
    ),
    # Sixth round: r5-b2-patch with a quarter of the prototypes (its step cost)
    Row(
        "r6-b2-patch-k256",
        [*R2, "model.head_block=2", "sddit.image_token=none", "model.head_dim=256"],
        "r5-b2-patch with 256 prototypes instead of 1,024",
    ),
    # Seventh round: r5-b2-patch's head on a quarter of the patch tokens (its step cost, K kept)
    Row(
        "r7-b2-patch-t0.25",
        [*R2, "model.head_block=2", "sddit.image_token=none", "sddit.head_token_fraction=0.25"],
        "r5-b2-patch with the head and patch loss on 12 of the 49 tokens per image",
    ),
    # Eighth round: r5-b2-patch and DiT at the default run's 8,160 steps
    Row("r8-dit-8160", [*R2, "objective=dit", "train.max_steps=8160"], "DiT at 8,160 steps", config="fmnist_dit"),
    Row(
        "r8-b2-patch-8160",
        [*R2, "model.head_block=2", "sddit.image_token=none", "train.max_steps=8160"],
        "r5-b2-patch at 8,160 steps",
    ),
]


def main() -> None:
    p = parse_args(__doc__, "ablation")
    args = p.parse_args()
    rows, config, fid_samples = select(ROWS, args.rows), "fmnist_sddit", args.fid_samples
    if args.smoke:
        config, fid_samples = "digits_tiny", 20
        tiny = ["train.max_steps=4", "train.batch_size=16", "train.gradnorm_every=2"]
        rows = [Row("dit", [*tiny, "objective=dit"], "smoke"), Row("sddit", [*tiny, "objective=sddit"], "smoke")]
    run_grid(
        rows,
        [int(s) for s in args.seeds.split(",")],
        config=config,
        out=Path(args.out),
        work=Path(args.work),
        name="ablation",
        workers=args.workers,
        fid_samples=fid_samples,
        argv=sys.argv,
        baseline=args.baseline or "dit",
        title="SD-DiT ablation on Fashion-MNIST, FID-1k (each row's steps and batch in the table)",
        row_major=True,
        summary_only=args.summary_only,
        keep_weights=args.keep_weights,
    )


if __name__ == "__main__":
    main()
