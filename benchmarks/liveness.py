"""Is each discriminative term alive? SD-DiT's per-term monitors across the runs of a sweep.

Reads every run's `metrics.jsonl` (a sweep's --work folder) and reports, per row and term (image,
patch): the teacher's entropy against ln K (uniform: the term carries no signal), the last step at
which it was within 1% of ln K (the warning band), the prototypes the batch uses and the batch spread of the
teacher logits, at a few steps and at the end; plus a figure of the entropy curves.

    python benchmarks/liveness.py --sweep runs/sweeps/ablation_r3 --rows r3-sddit,r3-mean --seeds 0,1,2

Writes OUT/NAME.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from common import write_result

from sddit.train.plots import read_metrics

TERMS = ("image", "patch")


def read(run: Path) -> tuple[list[dict], float]:
    """The loss records of a run and its ln K."""
    records = read_metrics(run)
    k = json.loads((run / "config.json").read_text())["model"]["head_dim"]
    return [r for r in records if "loss" in r], math.log(k)


def term_summary(records: list[dict], term: str, log_k: float, at: list[int]) -> dict | None:
    key = f"teacher_entropy_{term}"
    rows = [r for r in records if key in r]
    if not rows:
        return None
    in_band = [r["step"] for r in rows if r[key] >= 0.99 * log_k]  # within 1% of uniform
    by_step = {r["step"]: r for r in rows}
    pick = {s: by_step[s] for s in at if s in by_step}
    last = rows[-1]
    return {
        "last_step_in_band": in_band[-1] if in_band else None,
        "logged_steps_in_band": len(in_band),
        "entropy_over_ln_k": {str(s): r[key] / log_k for s, r in pick.items()},
        "final_entropy": last[key],
        "final_entropy_over_ln_k": last[key] / log_k,
        "final_prototypes_used": last.get(f"prototypes_used_{term}"),
        "final_logit_std": last.get(f"teacher_logit_std_{term}"),
        "curve": [(r["step"], r[key] / log_k) for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", required=True)
    p.add_argument("--rows", required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--at", default="200,500,1000,2400", help="steps to report")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="liveness")
    args = p.parse_args()
    at = [int(s) for s in args.at.split(",")]
    table = []
    for row in args.rows.split(","):
        runs = {int(s): Path(args.sweep) / f"{row}-seed{s}" for s in args.seeds.split(",")}
        runs = {s: r for s, r in runs.items() if (r / "metrics.jsonl").exists()}
        for term in TERMS:
            per_seed = {}
            for s, run in runs.items():
                records, log_k = read(run)
                if (t := term_summary(records, term, log_k, at)) is not None:
                    per_seed[s] = t
            if not per_seed:
                continue
            finals = [t["final_entropy_over_ln_k"] for t in per_seed.values()]
            table.append(
                {
                    "row": row,
                    "term": term,
                    "seeds": sorted(per_seed),
                    "ln_k": log_k,
                    "final_entropy_over_ln_k_mean": statistics.fmean(finals),
                    "final_prototypes_used_mean": statistics.fmean(
                        t["final_prototypes_used"] for t in per_seed.values()
                    ),
                    "last_step_in_band": [per_seed[s]["last_step_in_band"] for s in sorted(per_seed)],
                    "per_seed": {str(s): per_seed[s] for s in sorted(per_seed)},
                }
            )
    out = Path(args.out)
    write_result(out / f"{args.name}.json", sys.argv, name=args.name, at=at, table=table)
    summary = json.loads((out / f"{args.name}.json").read_text())
    lines = [
        f"# Liveness of SD-DiT's discriminative terms ({args.name})",
        "",
        f"`{summary['command']}` at commit {summary['git_commit']}, {summary['machine']}, {summary['date']}.",
        "",
        "Teacher entropy / ln K (1 = uniform: the term carries no signal; the warning band is >= 0.99), mean "
        "over seeds; 'last in band' is the last logged step with the entropy >= 0.99 ln K, per seed (- = never).",
        "",
        "| row | term | seeds | " + " | ".join(f"step {s}" for s in at) + " | end | prototypes used (end) "
        "| last in band |",
        "|---|---|---|" + "---|" * (len(at) + 3),
    ]
    for t in table:
        cells = []
        for s in at:
            v = [x["entropy_over_ln_k"].get(str(s)) for x in t["per_seed"].values()]
            v = [x for x in v if x is not None]
            cells.append(f"{statistics.fmean(v):.3f}" if v else "")
        left = ", ".join("-" if x is None else str(x) for x in t["last_step_in_band"])
        lines.append(
            f"| {t['row']} | {t['term']} | {len(t['seeds'])} | "
            + " | ".join(cells)
            + f" | {t['final_entropy_over_ln_k_mean']:.3f} | {t['final_prototypes_used_mean']:.0f} | {left} |"
        )
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(table, out / f"{args.name}.png")
    print("\n".join(lines))


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rows = list(dict.fromkeys(t["row"] for t in table))
    for ax, term in zip(axes, TERMS):
        for t in (t for t in table if t["term"] == term):
            color = f"C{rows.index(t['row'])}"
            for i, x in enumerate(t["per_seed"].values()):
                ax.plot(*zip(*x["curve"]), color=color, alpha=0.7, label=t["row"] if i == 0 else None)
        ax.axhline(0.99, color="k", linestyle=":", label="0.99 ln K (warning band)")
        ax.set_title(f"{term}-level term")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("teacher entropy / ln K")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
