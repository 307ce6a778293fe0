"""Sampling settings for one trained model: FID-N under each (guidance scale, interval, steps, weights).

Guidance, the sampler's step count and the EMA are chosen after training, so they are scored on one
checkpoint, not by retraining: every setting draws the same class-balanced seeds with the same
sampler and Inception as the run's own FID (the checkpoint's `eval` config), and only `cfg_scale`,
`cfg_interval`, the Heun step count and the weights (sampling EMA or raw) change. An interval `lo,hi`
guides at sigma in (lo, hi] and samples conditionally elsewhere (Kynkaanniemi et al. 2024), which
also saves the unconditional half of the batch outside it; sample seconds are recorded per setting.

    python benchmarks/guidance.py runs/fmnist_dit --set 2.0 --set 3.0 --set 3.0@0.3,5
    python benchmarks/guidance.py runs/fmnist_dit --set 3.0@0.3,5/12 --set raw:3.0@0.3,5 --workers 2
    python benchmarks/guidance.py CKPT --set 2.0 --workers 2 --json docs/results/guidance.json
    python benchmarks/guidance.py --smoke --json /tmp/g.json     # seconds-long check (used by the tests)

Each --set is [raw:]SCALE[@LO,HI][/STEPS]: `raw:` scores the raw trained weights instead of the
sampling EMA, /STEPS overrides the Heun step count (default: the checkpoint's eval.steps). With
--workers 2 the settings are split over two 1-thread processes (on 2 cores that beats one 2-thread
process). Writes docs/results/guidance.json (with provenance) unless --json says otherwise, and a .md table beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from common import write_result


def parse_setting(text: str) -> dict:
    """'[raw:]SCALE[@LO,HI][/STEPS]' -> {weights, scale, interval, steps (None = the checkpoint's)}."""
    weights, rest = ("raw", text[4:]) if text.startswith("raw:") else ("ema", text)
    rest, _, steps = rest.partition("/")
    scale, _, interval = rest.partition("@")
    lo, hi = (float(v) for v in interval.split(",")) if interval else (0.0, math.inf)
    if steps and int(steps) < 1:
        raise ValueError(steps)
    return {"weights": weights, "scale": float(scale), "interval": (lo, hi), "steps": int(steps) if steps else None}


def score(checkpoint: str, settings: list[str], num: int, threads: int) -> list[dict]:
    """FID of the checkpoint under each setting, in this process."""
    import torch

    torch.set_num_threads(threads)
    from sddit.eval import evaluate_generator
    from sddit.sampling.sources import load_source

    sources = {}
    out = []
    for text in settings:
        s = parse_setting(text)
        if s["weights"] not in sources:
            sources[s["weights"]] = load_source(checkpoint, weights=s["weights"])
        source = sources[s["weights"]]
        r = evaluate_generator(
            source.net,
            source.config,
            num_samples=num,
            cfg_scale=s["scale"],
            cfg_interval=s["interval"],
            steps=s["steps"],
        )
        kept = ("fid", "cfg_scale", "cfg_interval", "steps", "sample_seconds", "fid_seconds", "num_samples")
        out.append({"setting": text, "weights": s["weights"], **{k: r[k] for k in kept}})
        print(f"{text}: FID {r['fid']:.2f} (sampling {r['sample_seconds']:.0f} s)", file=sys.stderr)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="an sddit checkpoint file or run directory")
    p.add_argument("--set", action="append", default=[], help="[raw:]SCALE[@LO,HI][/STEPS] (repeatable)")
    p.add_argument("--num", type=int, default=1000, help="samples per setting (FID-N)")
    p.add_argument("--workers", type=int, default=1, help="1-thread processes in parallel (1 = one 2-thread process)")
    p.add_argument("--json", default="docs/results/guidance.json")
    p.add_argument("--smoke", action="store_true", help="a 4-step digits run, 20 samples: checks the script runs")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(score(spec["checkpoint"], spec["settings"], spec["num"], 1)))
        return
    settings = args.set or ["1.0", "2.0"]
    for s in settings:
        try:
            parse_setting(s)
        except ValueError:
            raise SystemExit(f"error: --set {s!r} is not [raw:]SCALE[@LO,HI][/STEPS] (e.g. 3.0@0.3,5/12)") from None
    checkpoint, num = args.checkpoint, args.num
    if args.smoke:
        import tempfile

        from sddit.config import load_config
        from sddit.train import Trainer

        run = Path(tempfile.mkdtemp()) / "run"
        cfg = load_config(
            "digits_tiny",
            ["train.max_steps=4", "train.batch_size=16", "train.compile=false", "eval.num_samples=0", f"run_dir={run}"],
        )
        Trainer(cfg, log=lambda *a: None).fit()
        checkpoint, num = str(run), 20
    if not checkpoint:
        raise SystemExit("error: give a checkpoint file or run directory (or --smoke)")
    if args.workers <= 1:
        results = score(checkpoint, settings, num, 2)
    else:
        parts = [settings[i :: args.workers] for i in range(args.workers)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    json.dumps({"checkpoint": checkpoint, "settings": part, "num": num}),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            for part in parts
            if part
        ]
        outs = [proc.communicate()[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise SystemExit("error: a scoring process failed (its error is printed above)")
        by_setting = {r["setting"]: r for o in outs for r in json.loads(o.strip().splitlines()[-1])}
        results = [by_setting[s] for s in settings]
    write_result(args.json, sys.argv, checkpoint=str(checkpoint), results=results)
    prov = json.loads(Path(args.json).read_text())
    lines = [
        f"`{prov['command']}` at commit {prov['git_commit']}, {prov['machine']}, {prov['date']}; checkpoint "
        f"{checkpoint}; FID-{num}.",
        "",
        "| setting | weights | cfg scale | interval (sigma) | Heun steps | FID | sampling s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {r['weights']} | {r['cfg_scale']} | {tuple(r['cfg_interval'])} | "
        f"{r['steps']} | {r['fid']:.2f} | {r['sample_seconds']:.0f} |"
        for r in results
    ]
    Path(args.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
