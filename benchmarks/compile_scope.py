"""`train.compile_scope`: one torch.compile graph of the whole student, or each block compiled in place.

The default run pays for compilation once per fresh machine (its first step), then for every step.
This script measures both for each scope on a config's own model and batch: each (scope, round)
in its own process with an empty inductor cache (`TORCHINDUCTOR_CACHE_DIR` in a temporary folder),
the first training step's seconds (the cold compile), then the mean ms of `--steps` steps in three
blocks after a warm-up; the scopes alternate over `--rounds`.

    python benchmarks/compile_scope.py --rounds 2 --json docs/results/compile_scope.json
    python benchmarks/compile_scope.py --smoke --json /tmp/c.json     # seconds-long check (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import write_result


def measure(args: argparse.Namespace) -> dict:
    """One process: build as the trainer does, compile with the scope, time the first and later steps."""
    import torch

    from sddit.config import load_config
    from throughput import build, compile_modules, random_batch

    torch.set_flush_denormal(True)
    cfg = load_config(args.config, list(args.set))
    device = torch.device("cpu")
    net, objective, opt = build(cfg, device)
    train_net = compile_modules(net, objective, {"model": "full", "blocks": "regional"}[args.scope])
    x0, y = random_batch(cfg, cfg.train.batch_size, device)

    def step(i: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            loss, _ = objective(train_net, x0, y, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step(net, i)

    t = time.perf_counter()
    step(0)
    first = time.perf_counter() - t
    for i in range(args.warmup):
        step(1 + i)
    blocks = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(args.steps):
            step(i)
        blocks.append(1000 * (time.perf_counter() - t) / args.steps)
    return {
        "scope": args.scope,
        "first_step_s": first,
        "ms_per_step_blocks": blocks,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fmnist_dit")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=100, help="steps per timed block (three blocks)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", default="docs/results/compile_scope.json")
    p.add_argument("--smoke", action="store_true", help="digits_tiny, a few steps: checks the script runs")
    p.add_argument("--scope", help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args()
    if args.smoke:
        args.config, args.rounds, args.steps, args.warmup = "digits_tiny", 1, 2, 1
        args.set = [*args.set, "train.compile=true"]
    if args.scope:
        print(json.dumps(measure(args)))
        return

    runs = []
    for r in range(args.rounds):
        for scope in ("blocks", "model") if r % 2 == 0 else ("model", "blocks"):
            with tempfile.TemporaryDirectory() as cache:
                cmd = [sys.executable, __file__, "--scope", scope, "--config", args.config]
                cmd += [a for s in args.set for a in ("--set", s)]
                cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                out = subprocess.run(
                    cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                )
            if out.returncode != 0:
                raise SystemExit(f"error: the {scope} run failed (its error is printed above)")
            row = {"round": r, **json.loads(out.stdout.strip().splitlines()[-1])}
            runs.append(row)
            print(
                f"round {r} {scope}: first step {row['first_step_s']:.1f} s, "
                f"{statistics.mean(row['ms_per_step_blocks']):.1f} ms/step",
                flush=True,
            )
    summary = {
        scope: {
            "first_step_s": [x["first_step_s"] for x in runs if x["scope"] == scope],
            "ms_per_step": [statistics.mean(x["ms_per_step_blocks"]) for x in runs if x["scope"] == scope],
        }
        for scope in ("model", "blocks")
    }
    write_result(args.json, sys.argv, config=args.config, set=args.set, runs=runs, summary=summary)


if __name__ == "__main__":
    main()
