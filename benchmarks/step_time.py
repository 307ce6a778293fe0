"""Training-step time and peak memory of dit, maskdit and sddit at the same backbone and batch.

Each objective runs in its own process (so peak memory is its own), on random data of the
config's shape, through the same pieces the trainer uses (build_model, EDMPrecond, the objective,
AdamW, the teacher EMA). Prints a table with ratios to dit.

    python benchmarks/step_time.py                       # fmnist_{dit,maskdit,sddit}: one backbone, CPU
    python benchmarks/step_time.py --set train.precision=fp32 --steps 10
    python benchmarks/step_time.py --set model.patch_size=2 --batch 32
    python benchmarks/step_time.py --repeats 5 --steps 30 --warmup 8   # ratio with its spread over 5 rounds
    python benchmarks/step_time.py --smoke               # seconds-long check (used by the tests)

For sddit it also times the teacher's forward alone (to the block its head reads, then the head):
with nothing masked an SD-DiT step cannot cost less than a DiT step plus that, the floor column.
The AdamW column times the optimiser's step alone (fused, as the trainer builds it), part of every
objective's step.

Peak memory: CUDA max_memory_allocated on GPU; on CPU the process's peak RSS (ru_maxrss), which
includes the Python/torch baseline (printed separately) and the model.

Why ratios from single runs disagree (1.36x to 1.55x for sddit/dit on one machine): one short run
per objective, run one after another, compares two moments of a shared 2-core machine, and any
other load in one of them (a build, a second benchmark, a turbo step) lands in one objective only.
So `--repeats R` (default 3) runs the objectives R times, interleaved and in a rotated order each
round, takes each ratio within a round (neighbours in time), and reports the median ratio with the
min-max over rounds: quote that spread with the figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys

from common import run_child, write_result


def measure(args: argparse.Namespace) -> dict:
    import torch

    from sddit.config import load_config
    from sddit.runtime import resolve_device
    from throughput import build, median_ms, time_training  # one timing loop for both benchmarks

    torch.set_flush_denormal(True)
    cfg = load_config(args.config.format(objective=args.objective), [f"objective={args.objective}", *args.set])
    device = resolve_device(args.device)
    if cfg.train.num_threads > 0:  # as the trainer does (before, only OMP_NUM_THREADS set the threads)
        torch.set_num_threads(cfg.train.num_threads)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    net, objective, opt = build(cfg, device)
    train_net = torch.compile(net) if cfg.train.compile else net
    r = time_training(
        net, train_net, objective, opt, cfg, device, args.batch or cfg.train.batch_size, args.steps, args.warmup
    )
    teacher_ms = time_teacher(objective, cfg, device, r["batch"], args.steps, args.warmup)
    adamw_ms = median_ms(lambda _: opt.step(), device, args.steps, args.warmup)  # the step's optimiser share
    return {
        "objective": args.objective,
        "ms_per_step": r["ms_per_step"],
        "batch": r["batch"],
        "peak_mb": r["peak_mb"],
        "teacher_ms": teacher_ms,
        "adamw_ms": adamw_ms,
        "baseline_rss_mb": baseline_rss if device.type == "cpu" else 0.0,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
        "device": str(device),
        "threads": torch.get_num_threads(),  # the measuring process's own (the provenance line is the parent's)
    }


def time_teacher(objective, cfg, device, batch: int, steps: int, warmup: int) -> float:
    """Median ms of SD-DiT's teacher forward alone (encoder to the head's block, then the head), as
    the step runs it; 0 for objectives without a teacher. An SD-DiT step cannot cost less than a
    DiT step plus this, whatever else is saved (with nothing masked)."""
    import torch

    from throughput import median_ms, random_batch

    if not hasattr(objective, "teacher"):
        return 0.0
    x0, y = random_batch(cfg, batch, device)
    sigma = torch.full((batch,), cfg.diffusion.sigma_min, device=device)
    x_t, drop = x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0), torch.zeros_like(y)

    def teacher_forward(_: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            objective.teacher_tokens(x_t, sigma, y, drop)

    return median_ms(teacher_forward, device, steps, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        default="fmnist_{objective}",
        help="preset or YAML; '{objective}' is replaced by each objective (default: its Fashion-MNIST preset)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--objectives", default="dit,maskdit,sddit", help="the first one is the base of the ratios")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; ratios are taken within a round")
    p.add_argument("--smoke", action="store_true", help="tiny config, 2 steps: checks the script runs")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--objective", help=argparse.SUPPRESS)  # internal: run one objective in this process
    args = p.parse_args()
    if args.smoke:
        args.config, args.steps, args.warmup, args.batch, args.repeats = "digits_tiny", 2, 1, 16, 2
        args.set = [*args.set, "train.compile=false"]
    if args.objective:
        print(json.dumps(measure(args)))
        return
    if args.repeats < 1:
        sys.exit("error: --repeats must be >= 1")

    objectives = args.objectives.split(",")
    runs: dict[str, list[dict]] = {o: [] for o in objectives}
    for r in range(args.repeats):  # interleaved, order rotated each round: no objective always goes first
        for objective in objectives[r % len(objectives) :] + objectives[: r % len(objectives)]:
            cmd = [
                sys.executable,
                __file__,
                "--objective",
                objective,
                "--config",
                args.config,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--device",
                args.device,
            ]
            for s in args.set:
                cmd += ["--set", s]
            runs[objective].append(run_child(cmd, objective))
    base_name = objectives[0]
    rows = []
    for objective in objectives:
        ms = [x["ms_per_step"] for x in runs[objective]]
        ratios = [a["ms_per_step"] / b["ms_per_step"] for a, b in zip(runs[objective], runs[base_name])]
        rows.append(
            {
                **runs[objective][0],
                "ms_per_step": statistics.median(ms),
                "ms_per_step_runs": ms,
                "teacher_ms": statistics.median(x["teacher_ms"] for x in runs[objective]),
                "adamw_ms": statistics.median(x["adamw_ms"] for x in runs[objective]),
                "peak_mb": max(x["peak_mb"] for x in runs[objective]),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    base = rows[0]
    print(
        f"config {args.config} {' '.join(args.set)} | batch {base['batch']} | {base['precision']} | "
        f"compile {base['compile']} | {base['device']} | {platform.processor() or platform.machine()} | "
        f"{args.repeats} interleaved round(s) of {args.steps} steps"
    )
    print(
        f"| objective | params | ms/step (median) | x {base_name} (median) | x {base_name} (min-max) | peak MB | x {base_name} "
        f"| teacher fwd ms | floor: 1 + teacher / {base_name} step | AdamW ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = f"{1 + r['teacher_ms'] / base['ms_per_step']:.2f}" if r["teacher_ms"] else ""
        print(
            f"| {r['objective']} | {r['params_m']:.2f}M | {r['ms_per_step']:.0f} | {r['ratio_median']:.2f} "
            f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.2f} "
            f"| {r['teacher_ms']:.1f} | {floor} | {r['adamw_ms']:.1f} |"
        )
    if base["device"] == "cpu":
        print(
            f"(CPU peak = process peak RSS; the Python+torch baseline before the model is ~{base['baseline_rss_mb']:.0f} MB)"
        )
    if args.json:
        write_result(args.json, sys.argv, repeats=args.repeats, rows=rows)


if __name__ == "__main__":
    main()
