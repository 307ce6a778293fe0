"""One 2-thread process or two 1-thread data-parallel processes: which trains a preset faster on
this CPU (`train.cpu_procs`)?

Each arm runs `sddit train --config CONFIG --no-eval` for --steps steps (no checkpoints) in a fresh
run directory and reads the training rate from its metrics.jsonl: the median img/s of the logged
windows after --skip steps (torch.compile's warm-up and the first steps), and the whole command's
wall-clock. The arms alternate (A B A B ...) so a drift of the machine hits both. Nothing else should
run meanwhile.

    python benchmarks/cpu_procs.py --json docs/results/cpu_procs.json     # fmnist_dit, 600 steps, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result


def run(config: str, procs: int, steps: int, skip: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "sddit.cli",
            "train",
            "--config",
            config,
            "--run-dir",
            tmp,
            "--no-eval",
            "--max-steps",
            str(steps),
            "--set",
            "train.ckpt_every=0",
            "--set",
            f"train.cpu_procs={procs}",
            *extra,
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in rows if "img_per_s" in r and r["step"] > skip]
    return {"procs": procs, "wall_s": wall, "img_per_s": statistics.median(rates), "windows": len(rates)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fmnist_dit")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--skip", type=int, default=100, help="steps left out of the rate (compile, warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--procs", default="1,2", help="arms: processes (each gets cores/procs threads)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    arms = [int(x) for x in args.procs.split(",")]
    runs = []
    for i in range(args.rounds):
        for procs in arms:
            runs.append({"round": i, **run(args.config, procs, args.steps, args.skip, extra)})
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for procs in arms:
        mine = [r for r in runs if r["procs"] == procs]
        summary[procs] = {
            "img_per_s": statistics.mean(r["img_per_s"] for r in mine),
            "wall_s": statistics.mean(r["wall_s"] for r in mine),
        }
    base = summary[arms[0]]
    for procs in arms:
        s = summary[procs]
        print(
            f"{procs} process(es): {s['img_per_s']:.1f} img/s ({s['img_per_s'] / base['img_per_s']:.2f}x), "
            f"{args.steps} steps in {s['wall_s']:.1f} s ({s['wall_s'] / base['wall_s']:.2f}x)"
        )
    if args.json:
        write_result(
            args.json,
            sys.argv,
            config=args.config,
            steps=args.steps,
            skip=args.skip,
            runs=runs,
            summary={str(k): v for k, v in summary.items()},
        )


if __name__ == "__main__":
    main()
