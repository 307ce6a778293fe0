"""FID of dit, maskdit and sddit at equal wall-clock: the paper's training-efficiency claim, measured.

Every method trains the same backbone (its `fmnist_{objective}` preset: depth 6, width 192,
patch 4; maskdit/sddit split it 4 + 2), with the same batch, optimiser, learning rate, EMA and
data order seed, for the same wall-clock budget on this machine. The budget becomes a step
count per method: a short calibration run measures each method's ms/step, and
max_steps = budget / (ms/step), so every schedule that depends on max_steps (SD-DiT's teacher
momentum and temperature warm-up, MaskDiT's unmasked fine-tune) runs to completion, the runs are
reproducible step for step, and the measured training time (recorded) shows how close to equal
the budgets came out. FID is taken at fixed fractions of each run (same sample count, sampler,
Heun steps, CFG scale, seeds and reference images for all) and is kept off the clock.

    python benchmarks/convergence.py                     # 32 min of training per method (~45 with FID), 1 seed
    python benchmarks/convergence.py --minutes 20 --seeds 0,1,2
    python benchmarks/convergence.py --smoke --out /tmp/c   # seconds-long check (used by the tests)

Writes OUT/convergence.json (every FID point, the command, git commit, machine and date),
OUT/convergence.png (FID against training images and against training minutes) and
OUT/convergence.md (the table). The JSON and PNG are rewritten after every FID point, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, provenance


def method_config(args: argparse.Namespace, objective: str, seed: int, run_dir: Path, max_steps: int,
                  extra: tuple[str, ...] = ()):
    from sddit.config import load_config

    overrides = [f"objective={objective}", "train.compile=false", "train.ckpt_every=0", "eval.num_samples=0",
                 *args.set, f"train.seed={seed}", f"run_dir={run_dir}", f"train.max_steps={max_steps}", *extra]
    return load_config(args.config.format(objective=objective), overrides)


def calibrate(args: argparse.Namespace, objective: str, extra: tuple[str, ...] = ()) -> float:
    """Seconds per training step of `objective` here, from a throwaway run (after warm-up steps)."""
    from sddit.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = method_config(args, objective, 0, Path(tmp), args.calib_warmup + args.calib_steps,
                            ("maskdit.unmask_finetune_steps=0", *extra))
        trainer = Trainer(cfg, log=lambda *_: None)
        trainer.fit(until=args.calib_warmup)
        t0 = trainer.train_seconds
        trainer.fit()
        return (trainer.train_seconds - t0) / args.calib_steps


def budget_steps(args: argparse.Namespace, objective: str) -> tuple[int, float]:
    """max_steps that fit the budget, and the calibrated s/step. MaskDiT's unmasked fine-tune (its
    last F steps, full tokens) is timed on its own: budget = (N - F) t_masked + F t_unmasked."""
    budget = args.minutes * 60
    t_step = calibrate(args, objective)
    finetune = method_config(args, objective, 0, Path("."), 1).maskdit.unmask_finetune_steps
    if objective != "maskdit" or finetune <= 0:
        return max(args.points, int(budget / t_step)), t_step
    t_full = calibrate(args, objective, ("maskdit.mask_ratio=0.0",))
    steps = finetune + int(max(0.0, budget - finetune * t_full) / t_step)
    return max(args.points, steps), budget / steps


def run_method(args: argparse.Namespace, objective: str, seed: int, max_steps: int, record) -> None:
    """Train to max_steps in `points` chunks; after each chunk, FID of the sampling EMA (off the clock)."""
    from sddit.eval import evaluate_generator
    from sddit.train import Trainer

    run_dir = Path(args.runs) / f"{objective}-seed{seed}"
    if run_dir.exists():  # the benchmark's own scratch directory: always a fresh run
        shutil.rmtree(run_dir)
    cfg = method_config(args, objective, seed, run_dir, max_steps)
    trainer = Trainer(cfg)
    stops = sorted({max(1, round(max_steps * k / args.points)) for k in range(1, args.points + 1)})
    for stop in stops:
        trainer.fit(until=stop)  # schedules see max_steps (the full run) on every step
        t = time.perf_counter()
        r = evaluate_generator(trainer.ema, cfg, args.fid_samples, trainer.device, steps=args.fid_steps,
                               cfg_scale=args.cfg_scale, seed=0)
        record({"method": objective, "seed": seed, "step": trainer.step, "max_steps": max_steps,
                "images_seen": trainer.step * cfg.train.batch_size, "train_seconds": round(trainer.train_seconds, 1),
                "fid": round(r["fid"], 3), "fid_samples": r["num_samples"], "fid_reference": r["num_reference"],
                "eval_seconds": round(time.perf_counter() - t, 1)})


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
        out[method] = [{
            "images_seen": statistics.mean(r["images_seen"] for r in rs),
            "train_minutes": statistics.mean(r["train_seconds"] for r in rs) / 60,
            "fid": statistics.mean(r["fid"] for r in rs), "fid_min": min(r["fid"] for r in rs),
            "fid_max": max(r["fid"] for r in rs),
            "fid_std": statistics.stdev([r["fid"] for r in rs]) if len(rs) > 1 else 0.0, "seeds": len(rs),
        } for _, rs in sorted(by_index.items())]
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
    head = ["method", "ms/step (calibrated)", "steps", "images seen", "train min"]
    head += [f"FID @{round(100 * (i + 1) / n_points)}%" for i in range(n_points)]
    head += ["min to DiT's final FID"] if dit_final is not None else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, c in cs.items():
        mine = [r for r in rows if r["method"] == method]
        fids = [f"{p['fid']:.1f}" + (f" ± {p['fid_std']:.1f}" if p["seeds"] > 1 else "") for p in c]
        fids += ["—"] * (n_points - len(c))
        cells = [method, f"{1000 * calib[method]:.0f}", str(mine[-1]["step"]), f"{c[-1]['images_seen'] / 1e3:.0f}k",
                 f"{c[-1]['train_minutes']:.1f}", *fids]
        if dit_final is not None:
            t = minutes_to_reach(c, dit_final)
            cells.append("not reached" if t is None else f"{t:.1f} ({t / cs['dit'][-1]['train_minutes']:.2f}x dit)")
        lines.append("| " + " | ".join(cells) + " |")
    e = meta["eval"]
    lines += ["", f"FID-{e['fid_samples']} vs {e['reference']} fixed test images, EDM Heun {e['fid_steps']} steps, "
              f"CFG {e['cfg_scale']}, sampling EMA, seeds 0..{e['fid_samples'] - 1} for every method; "
              f"{len(meta['seeds'])} training seed(s) {meta['seeds']}"
              + (" (mean ± std)" if len(meta["seeds"]) > 1 else "") + f". Budget {meta['minutes']} min/method. "
              f"{meta['provenance']['machine']}; {meta['provenance']['date']}; commit {meta['provenance']['git_commit'][:12]}.",
              f"Command: `{meta['provenance']['command']}`"]
    return "\n".join(lines) + "\n"


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
    p.add_argument("--config", default="fmnist_{objective}",
                   help="preset or YAML; '{objective}' becomes each method (default: its Fashion-MNIST preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every method")
    p.add_argument("--methods", default="dit,maskdit,sddit")
    p.add_argument("--minutes", type=float, default=32.0, help="training wall-clock budget per method and seed")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    p.add_argument("--points", type=int, default=4, help="FID points per run, at equal fractions of it")
    p.add_argument("--fid-samples", type=int, default=1000)
    p.add_argument("--fid-steps", type=int, default=18, help="Heun steps of the FID sampler")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--calib-steps", type=int, default=30)
    p.add_argument("--calib-warmup", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "docs" / "results"), help="where the .json/.png/.md go")
    p.add_argument("--runs", default="runs/convergence", help="scratch run directories (replaced)")
    p.add_argument("--smoke", action="store_true", help="digits, a few steps, tiny FID: checks the script runs")
    args = p.parse_args()
    if args.smoke:
        args.config, args.minutes, args.points, args.fid_samples, args.fid_steps = "digits_tiny", 0.02, 2, 10, 3
        args.calib_steps, args.calib_warmup = 5, 2
        args.runs = str(Path(args.out) / "runs")
    if args.minutes <= 0 or args.points < 1 or args.fid_samples < 2:
        sys.exit("error: --minutes must be > 0, --points >= 1 and --fid-samples >= 2")

    import torch

    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    meta = {"provenance": provenance(sys.argv), "minutes": args.minutes, "seeds": seeds, "config": args.config,
            "set": args.set, "eval": {"fid_samples": args.fid_samples, "fid_steps": args.fid_steps,
                                      "cfg_scale": args.cfg_scale, "reference": args.fid_samples,
                                      "sampler": "edm_heun", "network": "sampling EMA"},
            "chunks": "each run is one Trainer trained in chunks (fit(until=...)); schedules see the full max_steps"}
    calib: dict[str, float] = {}
    steps: dict[str, int] = {}
    rows: list[dict] = []

    def save() -> None:
        cs = curves(rows)
        (out / "convergence.json").write_text(json.dumps(
            {**meta, "ms_per_step_calibrated": {m: round(1000 * s, 1) for m, s in calib.items()},
             "max_steps": steps,
             "rows": rows, "curves": cs}, indent=2))
        plot(rows, out / "convergence.png", f"Fashion-MNIST, equal wall-clock ({args.minutes:g} min/method), "
                                              f"FID-{args.fid_samples}, {meta['provenance']['machine'][:60]}")

    def record(row: dict) -> None:
        rows.append(row)
        print(f"[convergence] {row['method']} seed {row['seed']}: step {row['step']}/{row['max_steps']}, "
              f"{row['train_seconds'] / 60:.1f} train min, FID-{row['fid_samples']} {row['fid']:.2f}", flush=True)
        save()

    for method in methods:
        steps[method], calib[method] = budget_steps(args, method)
        print(f"[convergence] {method}: {1000 * calib[method]:.0f} ms/step -> {steps[method]} steps in "
              f"{args.minutes:g} min", flush=True)
    for seed in seeds:
        for method in methods:
            run_method(args, method, seed, steps[method], record)
    md = table(rows, calib, meta)
    (out / "convergence.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
