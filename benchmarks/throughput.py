"""Training and sampling throughput of dit, maskdit and sddit, as ratios to dit, in one run.

For each model size and patch size (patch 4 and 2 on 32x32x4 ImageNet-256-shaped latents = 64 and
256 tokens), each objective is built from its ImageNet preset (`imagenet256_{objective}_xl2` with
`model.preset` set to DiT-S/2, MaskDiT-S/2, SD-DiT-S/2, ...) and trained on random latents through
the same pieces the trainer uses (EDMPrecond, the objective with its teacher, AdamW). Reported:

- training img/s and ms/step (median over the timed steps) at each batch size;
- peak memory: CUDA max_memory_allocated per batch size, or on CPU the process's peak RSS so far
  (each (size, patch, objective) runs in its own process, so it is that configuration's own, but it
  is a running maximum over its batch sizes and includes the FLOP-counting and sampling passes);
- GFLOP per training image, counted by torch.utils.flop_counter on one eager step (matmuls and
  attention, forward + backward, the teacher's forward included; with train.precision=fp32 on CPU the
  SDPA attention kernel is not counted by torch's flop counter), and from it the achieved TFLOP/s
  and, on a GPU with a known peak, the model FLOP utilisation (MFU);
- sampling img/s with the EDM Heun sampler at 40 steps (79 network evaluations per image, no CFG);
- with --official (CPU): our DiT step against a plain fp32 eager run of the official DiT
  computation (benchmarks/dit_speed.py), to show what our optimisations buy.

    python benchmarks/throughput.py                       # CPU defaults: S and B, patch 4 and 2, batch 8
    python benchmarks/throughput.py --sizes XL --patches 2 --batches 32,64,128,256 --device cuda --compile regional
    python benchmarks/throughput.py --config fmnist_{objective} --sizes config --objectives dit --batches 32 \
        --compile full --steps 50 --warmup 10     # the default run's own model and step, vs this CPU's peak
    python benchmarks/throughput.py --smoke --json /tmp/t.json   # seconds-long check (used by the tests)

`--sizes config` keeps the model of the config (no DiT preset). On a CPU the utilisation is against
the bf16 matmul rate this process reaches on a large square GEMM with the same threads (measured
at start, `cpu_peak_tflops`): the practical ceiling, since CPUs publish no bf16 peak. The gap
between that and the step's TFLOP/s is what small matrices, attention, norms, the optimiser and
Python overhead cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import provenance, run_child, write_result

PRESET = {"dit": "DiT-{size}/{patch}", "maskdit": "MaskDiT-{size}/{patch}", "sddit": "SD-DiT-{size}/{patch}"}
# Dense bf16 peaks (no sparsity), most specific name first: the first name contained in the card's name wins.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def cpu_gemm_tflops(n: int = 2048, reps: int = 10) -> float:
    """bf16 TFLOP/s of an n x n x n matmul on this CPU with the current threads (best of `reps`)."""
    import torch

    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b  # warm-up
    best = min(_seconds(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e12


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peak_tflops(device_name: str, override: float) -> float | None:
    if override > 0:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def build(cfg, device):
    """Student (EDMPrecond), objective (with the teacher for sddit) and AdamW, as the trainer builds them."""
    import torch

    from sddit.diffusion import EDMPrecond
    from sddit.objectives import build_objective
    from sddit.models import build_model
    from sddit.train.optim import build_optimizer

    torch.manual_seed(0)
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data).to(device)
    objective = build_objective(cfg, net)
    if hasattr(objective, "teacher"):
        objective.teacher.to(device)
    opt = build_optimizer(net, lr=1e-4)
    return net, objective, opt


def compile_modules(net, objective, mode: str):
    """'full': torch.compile the whole student (`train.compile_scope: model`); 'regional': compile
    each transformer block in place, the teacher's too (`compile_scope: blocks`: identical blocks
    share one compiled graph, a far shorter cold start); 'none': eager."""
    import torch

    from sddit.models import compile_blocks

    if mode == "full":
        return torch.compile(net)
    if mode == "regional":
        compile_blocks(net)
        if hasattr(objective, "teacher"):
            compile_blocks(objective.teacher)
    return net


def flops_per_image(net, objective, cfg, device, batch: int = 2) -> float:
    """FLOPs of one eager training step (forward + backward + teacher forward) per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x0, y = random_batch(cfg, batch, device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
        loss, _ = objective(net, x0, y, 0)
        loss.backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def random_batch(cfg, batch: int, device):
    import torch

    m = cfg.model
    g = torch.Generator().manual_seed(batch)
    x0 = torch.randn(batch, m.in_channels, m.input_size, m.input_size, generator=g).clamp(-3, 3).to(device)
    return x0, torch.randint(0, m.num_classes, (batch,), generator=g).to(device)


def time_training(net, train_net, objective, opt, cfg, device, batch: int, steps: int, warmup: int) -> dict:
    """Median step time of `objective(...) -> backward -> AdamW -> after_step` at one batch size."""
    import torch

    x0, y = random_batch(cfg, batch, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def train_step(step: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            loss, _ = objective(train_net, x0, y, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step(net, step)

    ms = median_ms(train_step, device, steps, warmup)
    return {"batch": batch, "ms_per_step": ms, "img_per_s": batch / ms * 1000, "peak_mb": peak_mb(device)}


def median_ms(fn, device, steps: int, warmup: int) -> float:
    """Median wall-clock ms of fn(i) over `steps` calls after `warmup` untimed ones (CUDA synchronised)."""
    import torch

    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def time_sampling(net, cfg, device, batch: int, heun_steps: int) -> float:
    """img/s of the EDM Heun sampler (2 * steps - 1 network evaluations per image), eager, no CFG."""
    import torch

    from sddit.sampling import generate

    net.eval()
    m = cfg.model
    labels = torch.arange(batch) % m.num_classes
    shape = (m.in_channels, m.input_size, m.input_size)
    kw = dict(null_label=m.num_classes, batch_size=batch, device=device, precision="bf16")
    generate(net, labels[:1], range(1), shape, num_steps=2, **kw)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    generate(net, labels, range(batch), shape, num_steps=heun_steps, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    net.train()
    return batch / (time.perf_counter() - t)


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace) -> dict:
    """One (size, patch, objective) in this process: every batch size, FLOPs, sampling."""
    import torch

    from sddit.config import load_config
    from sddit.runtime import resolve_device

    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    own = args.size == "config"  # the config's own model, no DiT preset
    preset = PRESET[args.objective].format(size=args.size, patch=args.patch)
    cfg = load_config(
        args.config.format(objective=args.objective), ([] if own else [f"model.preset={preset}"]) + args.set
    )
    if own:
        preset = (
            f"{args.config.format(objective=args.objective)} (depth {cfg.model.depth}, width {cfg.model.hidden_size})"
        )
    if args.smoke:  # the tiny explicit sizes of --set instead of the preset
        cfg.model.input_size, cfg.model.preset = 8, ""
    patch = args.patch if cfg.model.preset and not own else cfg.model.patch_size
    ctx = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION) if args.flash else None
    row = {
        "objective": args.objective,
        "preset": preset if not args.smoke else f"tiny {args.objective}",
        "size": args.size,
        "patch": patch,
        "tokens": (cfg.model.input_size // patch) ** 2,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "compile": args.compile,
        "flash": args.flash,
        "precision": cfg.train.precision,
        "train": [],
    }
    if ctx is not None:
        ctx.__enter__()
    # One model per process; FLOPs and sampling are measured eagerly before compiling.
    net, objective, opt = build(cfg, device)
    row["params_m"] = sum(p.numel() for p in net.parameters()) / 1e6
    row["gflop_per_img"] = flops_per_image(net, objective, cfg, device) / 1e9
    if args.sample_batch > 0:
        row["sample_img_per_s"] = time_sampling(net, cfg, device, args.sample_batch, args.heun_steps)
        row["sample_batch"], row["heun_steps"] = args.sample_batch, args.heun_steps
    train_net = compile_modules(net, objective, args.compile)
    if device.type == "cuda":
        peak = peak_tflops(row["device"], args.peak_tflops)
    else:
        row["cpu_peak_tflops"] = cpu_gemm_tflops()
        peak = args.peak_tflops or row["cpu_peak_tflops"]
    for batch in [int(b) for b in args.batches.split(",")]:
        try:
            r = time_training(net, train_net, objective, opt, cfg, device, batch, args.steps, args.warmup)
            r["tflops"] = row["gflop_per_img"] * r["img_per_s"] / 1e3
            r["mfu"] = r["tflops"] / peak if peak else None
        except torch.cuda.OutOfMemoryError:
            r = {"batch": batch, "oom": True}
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        row["train"].append(r)
        print(json.dumps({"progress": f"{preset} {args.objective} batch {batch}", **r}), file=sys.stderr, flush=True)
    if ctx is not None:
        ctx.__exit__(None, None, None)
    return row


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| model | tokens | batch | train img/s | x dit | ms/step | peak MB | x dit | GFLOP/img | TFLOP/s | MFU "
        f"| sample img/s ({args.heun_steps} Heun) | x dit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dit = {(r["size"], r["patch"]): r for r in rows if r["objective"] == "dit"}
    for r in rows:
        base = dit.get((r["size"], r["patch"]))
        for i, t in enumerate(r["train"]):
            b = base["train"][i] if base else None
            if t.get("oom"):
                lines.append(f"| {r['preset']} | {r['tokens']} | {t['batch']} | out of memory | | | | | | | | | |")
                continue
            ok = b is not None and not b.get("oom")
            mfu = "" if t["mfu"] is None else f"{100 * t['mfu']:.1f}%"
            samp = f"{r['sample_img_per_s']:.2f}" if "sample_img_per_s" in r and i == 0 else ""
            samp_x = (
                f"{r['sample_img_per_s'] / base['sample_img_per_s']:.2f}"
                if samp and base and "sample_img_per_s" in base
                else ""
            )
            lines.append(
                f"| {r['preset']} | {r['tokens']} | {t['batch']} | {t['img_per_s']:.1f} | "
                f"{t['img_per_s'] / b['img_per_s'] if ok else float('nan'):.2f} | {t['ms_per_step']:.0f} | "
                f"{t['peak_mb']:.0f} | {t['peak_mb'] / b['peak_mb'] if ok else float('nan'):.2f} | "
                f"{r['gflop_per_img']:.1f} | {t['tflops']:.2f} | {mfu} | "
                f"{samp} | {samp_x} |"
            )
    return "\n".join(lines) + "\n"


def _peak_words(rows: list[dict], args: argparse.Namespace) -> str:
    if args.peak_tflops:
        return f"{args.peak_tflops} TFLOP/s (--peak-tflops)"
    cpu = [r["cpu_peak_tflops"] for r in rows if "cpu_peak_tflops" in r]
    if cpu:
        return f"this CPU's bf16 2048^3 matmul rate ({min(cpu):.3f}-{max(cpu):.3f} TFLOP/s over the rows)"
    return "the card's dense bf16 peak"


def write(rows: list[dict], official: str | None, args: argparse.Namespace) -> None:
    """The JSON (every figure + command, commit, machine, date) and the markdown table with its header."""
    prov = provenance(sys.argv)
    if args.json:
        write_result(args.json, sys.argv, rows=rows, official=official)
    if args.md:
        Path(args.md).write_text(
            f"Measured on {prov['machine']}, {prov['date']}, commit {prov['git_commit']}; compile {args.compile}, "
            f"flash {args.flash}, bf16 autocast, MFU against {_peak_words(rows, args)}, {args.steps} timed steps after {args.warmup} warm-up; sampling: "
            f"{args.sample_batch} images, {args.heun_steps} Heun steps, no CFG, eager bf16.\n"
            f"Command: `{prov['command']}`\n\n"
            + markdown(rows, args)
            + (f"\nOur DiT step vs the official computation (fp32 eager), {official}" if official else "")
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config",
        default="imagenet256_{objective}_xl2",
        help="preset or YAML per objective ('{objective}' is replaced); model.preset is set per size",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--sizes", default="S,B", help="DiT sizes: S, B, L, XL, or config (the config's own model)")
    p.add_argument("--patches", default="4,2", help="patch sizes (4 -> 64 tokens, 2 -> 256 tokens on 32x32 latents)")
    p.add_argument("--objectives", default="dit,maskdit,sddit")
    p.add_argument("--batches", default="8", help="training batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per batch size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sample-batch", type=int, default=2, help="images for the sampling timing (0 = skip)")
    p.add_argument("--heun-steps", type=int, default=40)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="none", choices=["none", "full", "regional"])
    p.add_argument("--flash", action="store_true", help="force the flash-attention SDPA backend (CUDA)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak for MFU (default: known cards)")
    p.add_argument(
        "--official",
        action="store_true",
        help="also run benchmarks/dit_speed.py (ours vs the official computation, fp32 eager, CPU)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 step: checks the script runs")
    p.add_argument("--json", default=None, help="write every figure, with the command/commit/machine/date")
    p.add_argument("--md", default=None, help="write the markdown table")
    p.add_argument("--objective", help=argparse.SUPPRESS)  # internal: one (size, patch, objective) per process
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--patch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.sizes, args.patches, args.batches, args.steps, args.warmup = "S", "2", "4", 1, 1
        args.sample_batch, args.heun_steps = 1, 2
        args.set = [
            *args.set,
            "model.hidden_size=32",
            "model.depth=3",
            "model.num_heads=2",
            "model.decoder_depth=1",
            "model.head_dim=64",
            "model.head_hidden_dim=64",
            "model.head_bottleneck_dim=16",
            "model.patch_size=2",
            "model.num_classes=10",
        ]
    if args.objective:
        print(json.dumps(measure(args)))
        return

    rows = []
    for size in args.sizes.split(","):
        for patch in [0] if size == "config" else [int(x) for x in args.patches.split(",")]:
            for objective in args.objectives.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--objective",
                    objective,
                    "--size",
                    size,
                    "--patch",
                    str(patch),
                    "--config",
                    args.config,
                    "--batches",
                    args.batches,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--sample-batch",
                    str(args.sample_batch),
                    "--heun-steps",
                    str(args.heun_steps),
                    "--device",
                    args.device,
                    "--compile",
                    args.compile,
                    "--peak-tflops",
                    str(args.peak_tflops),
                    *(["--flash"] if args.flash else []),
                    *(["--smoke"] if args.smoke else []),
                ]
                for s in args.set:
                    cmd += ["--set", s]
                rows.append(run_child(cmd, f"{size}/{patch} {objective}"))
                write(rows, None, args)  # after every row: an interrupted run keeps what it measured
                print(
                    f"[throughput] {rows[-1]['preset']} {objective}: "
                    + ", ".join(
                        f"b{t['batch']} " + ("OOM" if t.get("oom") else f"{t['img_per_s']:.1f} img/s")
                        for t in rows[-1]["train"]
                    ),
                    flush=True,
                )
    official = None
    if args.official:
        cmd = [sys.executable, str(Path(__file__).with_name("dit_speed.py")), *(["--smoke"] if args.smoke else [])]
        official = "`" + " ".join(["python", "benchmarks/dit_speed.py", *cmd[2:]]) + "`:\n\n"
        official += subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        write(rows, official, args)
    print(
        markdown(rows, args)
        + (f"\nOur DiT step vs the official computation (fp32 eager), {official}" if official else "")
    )


if __name__ == "__main__":
    main()
