"""FID of dit, maskdit and sddit at equal wall-clock: the paper's training-efficiency claim, measured.

Every method trains the same backbone (its `fmnist_{objective}` preset: depth 6, width 128 (192
with batch 64 until commit 7f85f68, which the committed result used), patch 4; maskdit/sddit split
it 4 + 2; or the `fmnist32_*` presets: 256 tokens), with the same
batch, optimiser, learning rate, EMA and data order seed, for the same wall-clock budget. Each
(method, seed) runs in its own process with one torch thread, two processes at a time on the two
cores, so every run gets one core whatever the other one does (FID of one run never slows the
other's training). Inside each process a calibration (warm-up, then `--calib-steps` timed steps)
turns the budget into max_steps = budget / (s/step), so every schedule that depends on max_steps
(SD-DiT's teacher momentum, MaskDiT's unmasked fine-tune, lr decay) runs to completion; at every
FID stop the plan is re-fitted to the pace the run has actually kept (a 60-step calibration misjudged
8-minute runs by -6% to +8%, so budgets came out 14% apart), so the budgets come out equal; the
measured training time is recorded beside every FID point, and the spread of the budgets is in the
table. MaskDiT trains as its authors
do: masked, then an unmasked fine-tune for the last `--maskdit-finetune` fraction of its steps (its
two step costs calibrated separately). FID is taken at fixed fractions of each run (same sample
count, sampler, Heun steps, CFG scale, seeds and reference images for all), off the clock.

    python benchmarks/convergence.py --minutes 24 --seeds 0,1       # ~2 h on 2 cores
    python benchmarks/convergence.py --config 'fmnist32_{objective}' --name convergence32 --minutes 16 \
        --points 2 --seeds 0,1 --set train.compile=true --set sddit.mask_ratio=0 --set model.head_block=2
    python benchmarks/convergence.py --smoke --out /tmp/c           # seconds-long check (used by the tests)

The 256-token run (the second command; ~95 min on 2 cores) tests the paper's token count on the CPU,
compiled (at 256 tokens torch.compile cuts the SD-DiT step from 1.81x DiT's to 1.40x; DiT's barely
moves), SD-DiT in the best configuration of the 49-token rounds (unmasked, head on encoder block 2,
the cheapest). Hypotheses, written before it ran: (a) MaskDiT, at ~0.6x DiT's step cost here (0.74x
at 49 tokens), sees ~1.7x DiT's images and ends ahead of DiT, the setting its paper reports; (b)
SD-DiT, level with DiT per update at 49 tokens and at ~0.7x DiT's updates here, ends behind DiT at
equal time and does not reach DiT's final FID in half DiT's time; (c) per training image (its final
FID against DiT's curve at the same images) SD-DiT is level with DiT, unless the 5x more patch
tokens per image give the discriminative loss a signal it lacked at 49 tokens.
After the run (docs/results/convergence32.md): (a) not supported (MaskDiT 92.5 vs DiT 81.4), (b)
supported (SD-DiT 113.6), (c) level (113.6 at 26k images, DiT's curve ~111 there); MaskDiT and
SD-DiT ran seed 0 only. Corrections to the paragraph above: a pair of runs took ~46 min (FID ~14 min
a point), so all three pairs ~140 min; the 1.81x/1.40x came from one unrecorded round each, alone on
the machine; the recorded step times (docs/results/step_time_fmnist32_1t*.json, two commands at once)
are 1.91x eager and 1.50x compiled, DiT 971 -> 862 ms; "best" means the cheapest of the
configurations that scored within the seed spread of each other.

Third round (issue 23), the best live SD-DiT of docs/results/ablation_r3.md at the default run's
recipe, written before it ran:

    python benchmarks/convergence.py --methods dit,sddit --minutes 10 --points 2 --seeds 0,1 \
        --name convergence_r3 --set sddit.disc_loss=align --set sddit.image_token=cls --set model.head_block=2 \
        --set sddit.teacher_head_block=4 --set sddit.teacher_sigma=shift --set sddit.lambda_d=0.2

(the `sddit.*` keys change only the sddit runs; `image_token=cls` because the preset's `mean` is
refused with the alignment, which reads patch tokens only: the first launch stopped on that). It is SRA's alignment, the only live configuration
level with DiT per update over 4 paired seeds (-0.1 +- 3.4 at 2,400 steps); every live DINO variant
was 12-16 FID behind. Hypotheses: (e) at ~1.2x DiT's step cost it sees ~0.8x DiT's updates and ends
behind DiT at equal time, by about what DiT's own curve loses over those updates; (f) it does not
reach DiT's final FID in half DiT's time (the project's goal stays unmet); (g) per training image
it stays level with DiT, as at 2,400 steps.

Fourth round (issue 23), the same aligned SD-DiT at 256 tokens, written before it ran:

    python benchmarks/convergence.py --config 'fmnist32_{objective}' --methods dit,sddit --minutes 16 \
        --points 2 --seeds 0,1 --name convergence32_r4 --set train.compile=true --set sddit.disc_loss=align \
        --set sddit.image_token=cls --set model.head_block=2 --set sddit.teacher_head_block=4 \
        --set sddit.teacher_sigma=shift --set sddit.lambda_d=0.2

Its step, measured before the run (`benchmarks/step_time.py --config 'fmnist32_{objective}'` with
the keys above, 1 thread, compiled, 2 rounds alone on the machine): 375 ms against DiT's 331, 1.14x
(1.03-1.25), floor 1.22x; at 256 tokens the alignment drops the 1,024-prototype head that made
the DINO step 1.50x. Hypotheses: (h) at ~1.15-1.2x DiT's step it sees ~0.85x DiT's updates and
ends behind DiT at equal time, by less than the 49-token round's 7.5 FID; (i) it does not reach
DiT's final FID in half DiT's time; (j) per training image it is level with DiT (as the DINO
variant was at 256 tokens and the alignment at 49).
After the run (docs/results/convergence32_r4.md, 2 seeds): (h) not supported: side by side the step
cost 1.30x and 1.63x DiT's (1.45x), not ~1.15x, and SD-DiT ends 17.5 FID behind (79.7 +- 6.1 vs
62.2 +- 2.8); (i) supported; (j) level within the spread (+0.3 and +11.2 against DiT's curve at the
same images).

Fifth round (issue 23), the fifth ablation round's `r5-b2-patch` (patch term only, head on encoder
block 2, lambda_d 1: ahead of DiT per update on 6/6 seeds, -5.25 +- 2.44 FID-1k paired at 2,400
steps) at the default run's recipe, written before it ran:

    python benchmarks/convergence.py --methods dit,sddit --minutes 10 --points 2 --seeds 0,1 \
        --name convergence_r5 --set model.head_block=2 --set sddit.image_token=none --set sddit.lambda_d=1

Hypotheses: (k) side by side its step costs ~1.4x DiT's (1 thread, eager, head on block 2: 1.44x
in step_time.py), so it sees ~0.7x DiT's updates; (l) it ends level with DiT at equal time, within
the spread: the ~5 FID it gains per update is about what DiT's own curve gains from 0.7x to 1x the
updates (DiT: 66.0 at 2,400 steps, 51.6 at ~6,900, ~13.6 FID per e-fold of steps, so ~4.7 over
0.7x -> 1x); (m) it does not reach DiT's final FID in half DiT's time; (n) per training image it is
ahead of DiT's curve at the same images, by about its per-update lead.
After the run (docs/results/convergence_r5.md, 2 seeds): (k) not supported: side by side its step
cost 1.67x DiT's (130 vs 78 ms), 0.60x the updates; (l) not supported: it ends 11.7 FID behind
(61.1 +- 1.6 vs 49.4 +- 2.4); (m) supported; (n) not shown: 1.7 below DiT's curve at the same
images, against a mid-run DiT point, within the spread.

Sixth round (issue 23), `r5-b2-patch` at 256 tokens (the issue's equal-wall-clock study of the best
configuration at both token counts; the fourth round ran the then-best aligned SD-DiT there), compiled
as in the fourth round, written before it ran:

    python benchmarks/convergence.py --config 'fmnist32_{objective}' --methods dit,sddit --minutes 16 \
        --points 2 --seeds 0,1 --name convergence32_r5 --set train.compile=true --set sddit.mask_ratio=0 \
        --set model.head_block=2 --set sddit.image_token=none --set sddit.lambda_d=1

Since the fifth round the liveness monitor's batch std no longer costs a tenth of the eager step (its
torch `std(0)` ran outside the compiled graph). Hypotheses: (o) side by side its step costs >= 1.4x
DiT's (the DINO head at 256 tokens cost 1.50x compiled, alone, with the image term too), so it sees
<= 0.7x DiT's updates; (p) it ends behind DiT at equal time beyond the spread; (q) it does not reach
DiT's final FID in half DiT's time; (r) per training image it is level with DiT, as at 8,160 steps
and 49 tokens (ablation_r8), unless 5x the patch tokens per image give the patch term more to teach.
After the run (docs/results/convergence32_r5.md, 2 seeds): (o) supported: side by side its step cost
1.42x and 1.55x DiT's (0.68x the updates); (p) supported: it ends 20.5 FID behind (83.5 +- 7.3 vs
63.0 +- 3.1); (q) supported: at half its time it scores 117.7 against DiT's final 63.0; (r) level
within the spread: +5.3 and -1.1 against DiT's curve (drawn straight between its two points) at the
same images. The term stayed live (0.32-0.36 ln K, 350-450 prototypes used at the end).

Writes OUT/NAME.json (every FID point, the command, git commit, machine and date), OUT/NAME.png (FID
against training images and against training minutes) and OUT/NAME.md (the table), rewritten after
every finished run; finished runs are kept in RUNS/<method>-seed<k>.json, so a restart resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, provenance


def method_config(spec: dict, run_dir: Path, max_steps: int, extra: tuple[str, ...] = ()):
    from sddit.config import load_config

    overrides = [
        f"objective={spec['method']}",
        "train.compile=false",
        "train.ckpt_every=0",
        "eval.num_samples=0",
        "train.num_threads=1",
        *spec["set"],
        f"train.seed={spec['seed']}",
        f"run_dir={run_dir}",
        f"train.max_steps={max_steps}",
        *extra,
    ]
    return load_config(spec["config"].format(objective=spec["method"]), overrides)


def calibrate(spec: dict, extra: tuple[str, ...] = ()) -> float:
    """Seconds per training step here, from a throwaway run (after warm-up steps)."""
    from sddit.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = method_config(
            spec, Path(tmp), spec["calib_warmup"] + spec["calib_steps"], ("maskdit.unmask_finetune_steps=0", *extra)
        )
        trainer = Trainer(cfg, log=lambda *_: None)
        trainer.fit(until=spec["calib_warmup"])
        t0 = trainer.train_seconds
        trainer.fit()
        return (trainer.train_seconds - t0) / spec["calib_steps"]


def budget_steps(spec: dict) -> tuple[int, int, float, float]:
    """(max_steps that fit the budget, MaskDiT's unmasked fine-tune steps, calibrated mean s/step,
    cost of a fine-tune step / a masked one (1 without a fine-tune)).
    MaskDiT's fine-tune (the last fraction F of its steps, all tokens) is timed on its own:
    budget = N (1 - F) t_masked + N F t_full."""
    budget = spec["minutes"] * 60
    t_step = calibrate(spec)
    if spec["method"] != "maskdit" or spec["maskdit_finetune"] <= 0:
        return max(spec["points"], int(budget / t_step)), 0, t_step, 1.0
    t_full = calibrate(spec, ("maskdit.mask_ratio=0.0",))
    f = spec["maskdit_finetune"]
    steps = int(budget / ((1 - f) * t_step + f * t_full))
    return max(spec["points"], steps), round(f * steps), budget / steps, t_full / t_step


def refit_budget(
    cfg, step: int, seconds: float, pace: float, budget_s: float, f: float, r: float, min_left: int
) -> None:
    """Set train.max_steps (and MaskDiT's fine-tune steps) so that the run ends on the budget when the
    steps still to run go at `pace` (s/step, measured over the run's recent steps).

    MaskDiT before its fine-tune: the fine-tune fraction f of all steps costs r x a masked step,
    remaining = (N - s - f N) t + f N r t  =>  N = (remaining / t + s) / (1 + f (r - 1)).
    Inside the fine-tune every step left is an unmasked one (`pace` is then measured there) and the
    step where it began stays put."""
    left = max(0.0, budget_s - seconds) / pace  # steps the budget still holds at this pace
    m = cfg.maskdit
    tuning = cfg.objective == "maskdit" and m.unmask_finetune_steps > 0
    if tuning and step >= cfg.train.max_steps - m.unmask_finetune_steps:
        begin = cfg.train.max_steps - m.unmask_finetune_steps
        cfg.train.max_steps = max(step + min_left, step + round(left))
        m.unmask_finetune_steps = cfg.train.max_steps - begin
        return
    n = (
        max(step + min_left, round((left + step) / (1 + f * (r - 1))))
        if tuning
        else max(step + min_left, step + round(left))
    )
    cfg.train.max_steps = n  # schedules (lr decay, teacher momentum, MaskDiT's fine-tune) read it every step
    if tuning:
        m.unmask_finetune_steps = min(round(f * n), n - step)


def recent_pace(history: list[tuple[int, float]], since: int, window: int) -> float | None:
    """s/step over the last `window` steps of `history` [(step, train seconds)], not before step `since`."""
    step, t = history[-1]
    older = [(s, u) for s, u in history if s >= max(since, step - window) and s < step]
    if not older:
        return None
    s0, t0 = older[0]
    return (t - t0) / (step - s0)


def run_child(spec: dict) -> dict:
    """One (method, seed): calibrate, then train in `points` chunks with an FID of the sampling EMA
    after each (off the clock)."""
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from sddit.eval import evaluate_generator
    from sddit.train import Trainer

    max_steps, finetune, t_step, finetune_cost = budget_steps(spec)
    run_dir = Path(spec["run_dir"])
    if run_dir.exists():  # the benchmark's own scratch directory: always a fresh run
        shutil.rmtree(run_dir)
    cfg = method_config(spec, run_dir, max_steps, (f"maskdit.unmask_finetune_steps={finetune}",))
    trainer = Trainer(cfg, log=lambda *a: None)
    rows, points, plan, k = [], spec["points"], [max_steps], 1
    budget_s, every = spec["minutes"] * 60, max(1, max_steps // 50)  # re-fit every ~2% of the run
    history = [(0, 0.0)]
    while k <= points:
        stop = max(trainer.step + 1, round(cfg.train.max_steps * k / points))  # the next FID stop
        trainer.fit(until=min(stop, trainer.step + every))
        history.append((trainer.step, trainer.train_seconds))
        if trainer.step < cfg.train.max_steps:  # re-fit the steps still to run to the budget
            ft = cfg.maskdit.unmask_finetune_steps if cfg.objective == "maskdit" else 0
            phase = cfg.train.max_steps - ft if ft and trainer.step >= cfg.train.max_steps - ft else 0
            pace = recent_pace(history, phase, window=10 * every)
            if pace is None:  # the fine-tune has just begun: its calibrated cost
                pace = finetune_cost * recent_pace(history, 0, window=10 * every)
            refit_budget(
                cfg,
                trainer.step,
                trainer.train_seconds,
                pace,
                budget_s,
                spec["maskdit_finetune"],
                finetune_cost,
                points - k + 1,
            )
            if cfg.train.max_steps != plan[-1]:
                plan.append(cfg.train.max_steps)
        if trainer.step < round(cfg.train.max_steps * k / points):
            continue
        k += 1
        max_steps, finetune = cfg.train.max_steps, cfg.maskdit.unmask_finetune_steps
        t = time.perf_counter()
        r = evaluate_generator(
            trainer.ema,
            cfg,
            spec["fid_samples"],
            trainer.device,
            steps=spec["fid_steps"],
            cfg_scale=spec["cfg_scale"],
            seed=0,
        )
        rows.append(
            {
                "method": spec["method"],
                "seed": spec["seed"],
                "step": trainer.step,
                "max_steps": max_steps,
                "finetune_steps": finetune,
                "images_seen": trainer.step * cfg.train.batch_size,
                "train_seconds": round(trainer.train_seconds, 1),
                "fid": round(r["fid"], 3),
                "fid_samples": r["num_samples"],
                "fid_reference": r["num_reference"],
                "eval_seconds": round(time.perf_counter() - t, 1),
                "calibrated_s_per_step": t_step,
                "max_steps_plan": list(plan),
            }
        )
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return {"rows": rows}


# -------------------------------------------------------------------------------- summary
def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Per method, one point per FID stop: the mean (and min/max) over seeds."""
    out: dict[str, list[dict]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        by_index: dict[int, list[dict]] = {}
        for seed in dict.fromkeys(r["seed"] for r in mine):
            for i, r in enumerate([r for r in mine if r["seed"] == seed]):
                by_index.setdefault(i, []).append(r)
        out[method] = [
            {
                "images_seen": statistics.mean(r["images_seen"] for r in rs),
                "train_minutes": statistics.mean(r["train_seconds"] for r in rs) / 60,
                "fid": statistics.mean(r["fid"] for r in rs),
                "fid_min": min(r["fid"] for r in rs),
                "fid_max": max(r["fid"] for r in rs),
                "fid_std": statistics.stdev([r["fid"] for r in rs]) if len(rs) > 1 else 0.0,
                "seeds": len(rs),
            }
            for _, rs in sorted(by_index.items())
        ]
    return out


def minutes_to_reach(curve: list[dict], target: float) -> float | None:
    """Training minutes at which a curve first reaches FID <= target (linear between FID points)."""
    prev = None
    for p in curve:
        if p["fid"] <= target:
            if prev is None:
                return p["train_minutes"]
            frac = (prev["fid"] - target) / max(prev["fid"] - p["fid"], 1e-12)
            return prev["train_minutes"] + frac * (p["train_minutes"] - prev["train_minutes"])
        prev = p
    return None


def table(rows: list[dict], calib: dict[str, float], meta: dict) -> str:
    cs = curves(rows)
    n_points = max(len(c) for c in cs.values())
    dit_final = cs["dit"][-1]["fid"] if "dit" in cs and len(cs["dit"]) == n_points else None
    head = ["method", "ms/step (calibrated)", "steps (per seed)", "images seen", "train min"]
    head += [f"FID @{round(100 * (i + 1) / n_points)}%" for i in range(n_points)]
    head += ["min to DiT's final FID"] if dit_final is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, c in cs.items():
        mine = [r for r in rows if r["method"] == method]
        fids = [f"{p['fid']:.1f}" + (f" ± {p['fid_std']:.1f}" if p["seeds"] > 1 else "") for p in c]
        fids += ["—"] * (n_points - len(c))
        finals = [r for r in mine if r["step"] == r["max_steps"]]
        steps = "/".join(str(r["step"]) for r in finals) or str(mine[-1]["step"])
        cells = [
            method,
            f"{1000 * calib[method]:.0f}",
            steps,
            f"{c[-1]['images_seen'] / 1e3:.0f}k",
            f"{c[-1]['train_minutes']:.1f}",
            *fids,
        ]
        if dit_final is not None:
            t = minutes_to_reach(c, dit_final)
            cells.append("not reached" if t is None else f"{t:.1f} ({t / cs['dit'][-1]['train_minutes']:.2f}x dit)")
        lines.append("| " + " | ".join(cells) + " |")
    e = meta["eval"]
    lines += [
        "",
        f"FID-{e['fid_samples']} vs {e['reference']} fixed test images, EDM Heun {e['fid_steps']} steps, "
        f"CFG {e['cfg_scale']}, sampling EMA, seeds 0..{e['fid_samples'] - 1} for every method; "
        f"{len(meta['seeds'])} training seed(s) {meta['seeds']}"
        + (" (mean ± std)" if len(meta["seeds"]) > 1 else "")
        + f". Budget {meta['minutes']} min/method. "
        f"{meta['provenance']['machine']}; {meta['provenance']['date']}; commit {meta['provenance']['git_commit'][:12]}.",
        budget_spread(rows),
        f"Command: `{meta['provenance']['command']}`",
    ]
    return "\n".join(lines) + "\n"


def budget_spread(rows: list[dict]) -> str:
    """How equal the budgets came out: the final training minutes of every finished run."""
    finals = [r["train_seconds"] / 60 for r in rows if r["step"] == r["max_steps"]]
    if not finals:
        return ""
    lo, hi = min(finals), max(finals)
    return (
        f"Training minutes of the {len(finals)} finished runs: {lo:.2f} to {hi:.2f} "
        f"(max/min - 1 = {100 * (hi / lo - 1):.1f}%)."
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, c in curves(rows).items():
        for ax, key, scale in ((axes[0], "images_seen", 1e3), (axes[1], "train_minutes", 1.0)):
            x = [p[key] / scale for p in c]
            ax.plot(x, [p["fid"] for p in c], marker="o", label=method)
            if c[0]["seeds"] > 1:
                ax.fill_between(x, [p["fid_min"] for p in c], [p["fid_max"] for p in c], alpha=0.2)
    axes[0].set_xlabel("training images (thousands)")
    axes[1].set_xlabel("training wall-clock (minutes)")
    axes[0].set_ylabel("FID")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        default="fmnist_{objective}",
        help="preset or YAML; '{objective}' becomes each method (default: its Fashion-MNIST preset)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every method")
    p.add_argument("--methods", default="dit,maskdit,sddit")
    p.add_argument("--minutes", type=float, default=24.0, help="training wall-clock budget per run (1 thread)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    p.add_argument("--points", type=int, default=4, help="FID points per run, at equal fractions of it")
    p.add_argument("--fid-samples", type=int, default=1000)
    p.add_argument("--fid-steps", type=int, default=18, help="Heun steps of the FID sampler")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument(
        "--maskdit-finetune",
        type=float,
        default=0.1,
        help="fraction of MaskDiT's steps trained unmasked at the end (0 = none)",
    )
    p.add_argument("--calib-steps", type=int, default=60)
    p.add_argument("--calib-warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one torch thread each")
    p.add_argument("--name", default="convergence", help="output file stem")
    p.add_argument("--out", default=str(REPO / "docs" / "results"), help="where the .json/.png/.md go")
    p.add_argument("--runs", default="runs/convergence", help="per-run records and scratch run directories")
    p.add_argument("--smoke", action="store_true", help="digits, a few steps, tiny FID: checks the script runs")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    if args.smoke:
        args.config, args.minutes, args.points, args.fid_samples, args.fid_steps = "digits_tiny", 0.02, 2, 10, 3
        args.calib_steps, args.calib_warmup = 5, 2
        args.runs = str(Path(args.out) / "runs")
    if args.minutes <= 0 or args.points < 1 or args.fid_samples < 2 or not 0 <= args.maskdit_finetune < 1:
        sys.exit("error: --minutes must be > 0, --points >= 1, --fid-samples >= 2, 0 <= --maskdit-finetune < 1")

    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    meta = {
        "provenance": provenance(sys.argv),
        "minutes": args.minutes,
        "seeds": seeds,
        "config": args.config,
        "set": args.set,
        "maskdit_finetune": args.maskdit_finetune,
        "eval": {
            "fid_samples": args.fid_samples,
            "fid_steps": args.fid_steps,
            "cfg_scale": args.cfg_scale,
            "reference": args.fid_samples,
            "sampler": "edm_stochastic" if any(s.startswith("eval.churn=") for s in args.set) else "edm_heun",
            "network": "sampling EMA",
        },
        "protocol": f"each (method, seed) in its own 1-thread process, {args.workers} at a time on "
        f"{os.cpu_count()} cores; calibrated in that process; FID off the clock",
    }
    jobs = [(m, s) for s in seeds for m in methods]

    def record_path(m: str, s: int) -> Path:
        return runs / f"{m}-seed{s}.json"

    def save() -> list[dict]:
        rows = [
            r for m, s in jobs if record_path(m, s).exists() for r in json.loads(record_path(m, s).read_text())["rows"]
        ]
        calib = {
            m: statistics.mean(r["calibrated_s_per_step"] for r in rows if r["method"] == m)
            for m in methods
            if any(r["method"] == m for r in rows)
        }
        (out / f"{args.name}.json").write_text(
            json.dumps(
                {
                    **meta,
                    "ms_per_step_calibrated": {m: round(1000 * v, 1) for m, v in calib.items()},
                    "rows": rows,
                    "curves": curves(rows),
                },
                indent=2,
            )
        )
        if rows:
            plot(
                rows,
                out / f"{args.name}.png",
                f"{args.config.format(objective='*')}: equal wall-clock "
                f"({args.minutes:g} min/run, 1 thread), FID-{args.fid_samples}, {meta['provenance']['machine'][:50]}",
            )
            (out / f"{args.name}.md").write_text(table(rows, calib, meta))
        return rows

    _warm_reference_cache(args, methods)
    pending = [(m, s) for m, s in jobs if not record_path(m, s).exists()]
    running: list[tuple[subprocess.Popen, str, int]] = []
    while pending or running:
        while pending and len(running) < args.workers:
            m, s = pending.pop(0)
            spec = {
                "method": m,
                "seed": s,
                "config": args.config,
                "set": args.set,
                "minutes": args.minutes,
                "points": args.points,
                "fid_samples": args.fid_samples,
                "fid_steps": args.fid_steps,
                "cfg_scale": args.cfg_scale,
                "maskdit_finetune": args.maskdit_finetune,
                "calib_steps": args.calib_steps,
                "calib_warmup": args.calib_warmup,
                "run_dir": str(runs / f"{m}-seed{s}"),
            }
            log = (runs / f"{m}-seed{s}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            running.append((proc, m, s))
            print(f"[convergence] started {m} seed {s}", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, m, s = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                print(
                    f"[convergence] {m} seed {s} failed (exit {proc.returncode}); see {runs / f'{m}-seed{s}.log'}",
                    flush=True,
                )
                continue
            result = json.loads(proc.stdout.read().strip().splitlines()[-1])
            record_path(m, s).write_text(json.dumps(result, indent=1))
            last = result["rows"][-1]
            print(
                f"[convergence] {m} seed {s}: {last['step']} steps, {last['train_seconds'] / 60:.1f} train min, "
                f"FID-{last['fid_samples']} {last['fid']:.2f}",
                flush=True,
            )
            save()
    rows = save()
    if rows:
        print((out / f"{args.name}.md").read_text())


def _warm_reference_cache(args: argparse.Namespace, methods: list[str]) -> None:
    """Reference statistics once, before the runs start (they would all compute them at once)."""
    from sddit.config import load_config
    from sddit.eval import InceptionFeatures, find_inception_weights, load_inception, reference_stats

    cfg = load_config(args.config.format(objective=methods[0]), [*args.set])
    weights = find_inception_weights(cfg.eval.inception or None)
    extractor = InceptionFeatures(
        load_inception(weights), batch_size=50, progress=True, precision=cfg.eval.inception_precision
    )
    reference_stats(cfg, args.fid_samples, extractor, weights)


if __name__ == "__main__":
    main()
