"""Run a grid of training configurations x seeds, score each with one FID protocol, write one table.

The engine behind `recipe.py` (the default run's recipe) and `ablate.py` (the SD-DiT study). A row
is a named list of config overrides with the question it answers. Every (row, seed) trains in its
own process with one torch thread: on the 2-core CPU two single-thread processes train ~1.33x more
images per second than one two-thread process (485 vs 324 ms/step each for the default DiT, measured
on this machine), and rows never share state. After training, the child scores the sampling EMA
with FID-N under each of the row's evaluation settings (same class-balanced seeds, sampler and
reference images for every row) off the training clock.

Finished runs are kept as WORK/<row>-seed<k>.json (with the run folder and log beside it), so an
interrupted sweep resumes where it stopped; the summary OUT/<name>.{json,md,png} (provenance, mean
and spread per row) is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import provenance


@dataclass
class Row:
    """One configuration of a grid: `overrides` on top of the grid's preset, and what it tests."""

    name: str
    overrides: list[str]
    note: str = ""
    config: str = ""  # preset or YAML; empty = the grid's
    evals: list[dict] = field(default_factory=lambda: [{}])  # FID settings: {} or {"steps": 12, "cfg_scale": 1.5}


def eval_label(e: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(e.items())) or "default"


# ------------------------------------------------------------------------------------------ child


def run_child(spec: dict) -> dict:
    """Train one (row, seed) single-threaded, then FID of its sampling EMA under each eval setting."""
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from sddit.config import load_config
    from sddit.eval import evaluate_generator
    from sddit.train import Trainer

    run_dir = Path(spec["run_dir"])
    overrides = [
        "train.compile=false",
        "train.ckpt_every=0",
        "eval.num_samples=0",
        "train.num_threads=1",
        *spec["overrides"],
        f"train.seed={spec['seed']}",
        f"run_dir={run_dir}",
    ]
    cfg = load_config(spec["config"], overrides)
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.fit()
    steps = cfg.train.max_steps
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    norms = [r for r in records if any(k.startswith("gradnorm_") for k in r)]
    mean_norms = (
        {k: sum(r[k] for r in norms) / len(norms) for k in norms[0] if k.startswith("gradnorm_")} if norms else {}
    )
    fids = []
    for e in spec["evals"]:
        r = evaluate_generator(
            trainer.ema,
            cfg,
            num_samples=spec["fid_samples"],
            device="cpu",
            steps=e.get("steps"),
            cfg_scale=e.get("cfg_scale"),
        )
        fids.append(
            {
                "eval": eval_label(e),
                "fid": r["fid"],
                "steps": r["steps"],
                "cfg_scale": r["cfg_scale"],
                "sample_seconds": r["sample_seconds"],
                "fid_seconds": r["fid_seconds"],
            }
        )
    if not spec.get("keep_weights"):  # the run's record is the JSON; weights are kept only when asked (probe.py)
        for ckpt in (run_dir / "checkpoints").glob("*.pt"):
            ckpt.unlink()
    return {
        "row": spec["row"],
        "seed": spec["seed"],
        "overrides": spec["overrides"],
        "config": spec["config"],
        "git_commit": provenance(["sweep.py"])[
            "git_commit"
        ],  # the code this run trained with (a sweep may span commits)
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "images": steps * cfg.train.batch_size,
        "train_seconds": trainer.train_seconds,
        "ms_per_step": 1000 * trainer.train_seconds / max(1, steps),
        "final_metrics": {
            **{k: v for k, v in last.items() if k not in ("step", "img_per_s", "train_seconds")},
            **{f"mean_{k}": v for k, v in mean_norms.items()},
        },
        "fids": fids,
    }


# ------------------------------------------------------------------------------------------ parent


def _job_path(work: Path, row: str, seed: int) -> Path:
    return work / f"{row}-seed{seed}.json"


def run_grid(
    rows: list[Row],
    seeds: list[int],
    *,
    config: str,
    out: Path,
    work: Path,
    name: str,
    workers: int,
    fid_samples: int,
    argv: list[str],
    baseline: str | None = None,
    title: str = "",
    row_major: bool = False,
    summary_only: bool = False,
    keep_weights: bool = False,
) -> dict:
    """Run every missing (row, seed) with `workers` processes in parallel; summarise after each.

    Seed-major order (all rows of seed 0 first) gives a first look at every row soonest; row-major
    order finishes whole rows first, so a sweep cut short leaves complete rows. `summary_only`
    tabulates the finished runs and runs nothing (a grid whose rows ran different seed counts)."""
    from tqdm.auto import tqdm

    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if summary_only:
        return summarize(rows, seeds, out, work, name, argv, baseline, title)
    _warm_reference_cache(config, rows, fid_samples)
    order = [(r, s) for r in rows for s in seeds] if row_major else [(r, s) for s in seeds for r in rows]
    jobs = [(r, s) for r, s in order if not _job_path(work, r.name, s).exists()]
    running: list[tuple[subprocess.Popen, Row, int, float]] = []
    bar = tqdm(total=len(jobs), desc=f"{name}: runs", unit="run")
    summary = summarize(rows, seeds, out, work, name, argv, baseline, title)
    while jobs or running:
        while jobs and len(running) < workers:
            row, seed = jobs.pop(0)
            spec = {
                "row": row.name,
                "seed": seed,
                "config": row.config or config,
                "overrides": row.overrides,
                "evals": row.evals,
                "fid_samples": fid_samples,
                "keep_weights": keep_weights,
                "run_dir": str(work / f"{row.name}-seed{seed}"),
            }
            log = (work / f"{row.name}-seed{seed}.log").open("w")
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            running.append((proc, row, seed, time.time()))
        time.sleep(2)
        for item in list(running):
            proc, row, seed, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            stdout = proc.stdout.read() if proc.stdout else ""
            if proc.returncode != 0:
                bar.write(
                    f"{row.name} seed {seed} failed (exit {proc.returncode}); see {work / f'{row.name}-seed{seed}.log'}"
                )
            else:
                result = json.loads(stdout.strip().splitlines()[-1])
                result["wall_seconds"] = round(time.time() - t0, 1)
                path = _job_path(work, row.name, seed)
                path.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
                path.with_suffix(".tmp").replace(path)
                fid = result["fids"][0]["fid"]
                bar.write(f"{row.name} seed {seed}: FID {fid:.2f} ({result['ms_per_step']:.0f} ms/step)")
            bar.update(1)
            summary = summarize(rows, seeds, out, work, name, argv, baseline, title)
    bar.close()
    return summary


def _warm_reference_cache(config: str, rows: list[Row], fid_samples: int) -> None:
    """Reference statistics once, before the children start (they would all compute them at once)."""
    import torch

    from sddit.config import load_config
    from sddit.eval import InceptionFeatures, find_inception_weights, load_inception, reference_stats

    done = set()
    for row in rows:
        cfg = load_config(row.config or config, row.overrides)
        key = (cfg.data.dataset, cfg.data.root, cfg.eval.reference, cfg.eval.inception_precision)
        if key in done:
            continue
        done.add(key)
        weights = find_inception_weights(cfg.eval.inception or None)
        extractor = InceptionFeatures(
            load_inception(weights),
            device=torch.device("cpu"),
            batch_size=50,
            progress=True,
            precision=cfg.eval.inception_precision,
        )
        reference_stats(cfg, fid_samples, extractor, weights)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def _paired(t: dict, base: dict) -> dict:
    """The difference seed by seed, on the seeds both rows ran: a seed fixes the data order and the
    noise of every step for all rows, so much of the seed-to-seed spread cancels in it."""
    base_by_seed = dict(zip(base["seeds"], base["fid"]))
    d = [f - base_by_seed[s] for s, f in zip(t["seeds"], t["fid"]) if s in base_by_seed]
    if len(d) < 2:
        return {}
    mean, std = _mean_std(d)
    se = std / math.sqrt(len(d))
    return {"paired_diffs": d, "paired_diff": mean, "paired_se": se, "paired_beyond": bool(abs(mean) > 2 * se)}


def summarize(
    rows: list[Row],
    seeds: list[int],
    out: Path,
    work: Path,
    name: str,
    argv: list[str],
    baseline: str | None,
    title: str,
) -> dict:
    """Mean and spread over seeds per (row, eval); each row's difference to the baseline row, flagged when it
    exceeds twice its standard error (the seed spread of both rows)."""
    table = []
    for row in rows:
        runs = [json.loads(p.read_text()) for s in seeds if (p := _job_path(work, row.name, s)).exists()]
        if not runs:
            continue
        for i, e in enumerate(row.evals):
            fids = [r["fids"][i]["fid"] for r in runs]
            mean, std = _mean_std(fids)
            entry = {
                "row": row.name,
                "eval": eval_label(e),
                "note": row.note,
                "overrides": row.overrides,
                "seeds": [r["seed"] for r in runs],
                "fid": fids,
                "fid_mean": mean,
                "fid_std": std,
                "ms_per_step": statistics.fmean(r["ms_per_step"] for r in runs),
                "steps": runs[0]["steps"],
                "images": runs[0]["images"],
                "commits": sorted({r.get("git_commit", "unrecorded") for r in runs}),
                "train_minutes": statistics.fmean(r["train_seconds"] for r in runs) / 60,
                "final_metrics": {
                    k: statistics.fmean(r["final_metrics"].get(k, float("nan")) for r in runs)
                    for k in runs[0]["final_metrics"]
                },
            }
            table.append(entry)
    base_name = baseline if any(r.name == baseline for r in rows) else rows[0].name
    base = next((t for t in table if t["row"] == base_name and t["eval"] == "default"), None)
    for t in table:
        if base is None or t is base:
            continue
        diff = t["fid_mean"] - base["fid_mean"]
        n1, n2 = len(t["fid"]), len(base["fid"])
        se = math.sqrt(t["fid_std"] ** 2 / n1 + base["fid_std"] ** 2 / n2) if min(n1, n2) > 1 else float("nan")
        t["vs_baseline"] = {
            "baseline": base["row"],
            "diff": diff,
            "se": se,
            "beyond_spread": bool(se == se and abs(diff) > 2 * se),
            **_paired(t, base),
        }
    summary = {
        **provenance(argv),
        "name": name,
        "title": title,
        "seeds": seeds,
        "baseline": base["row"] if base else None,
        "protocol": "each (row, seed) trains in its own 1-thread process, 2 at a time; FID of the sampling "
        "EMA vs the fixed reference images; ms/step measured under that load",
        "rows": [asdict(r) for r in rows],
        "table": table,
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{name}.md").write_text(markdown(summary))
    if table:
        plot(summary, out / f"{name}.png")
    return summary


def markdown(summary: dict) -> str:
    lines = [
        f"# {summary['title'] or summary['name']}",
        "",
        f"`{summary['command']}` at commit {summary['git_commit']}, {summary['machine']}, {summary['date']}.",
        "",
        f"Baseline row: `{summary['baseline']}`. *beyond spread*: |diff| > 2 x its standard error over seeds. "
        "*paired*: the mean of the per-seed differences on the seeds both rows ran, ± its standard error "
        "(a seed fixes the data order and each step's noise for every row); *yes* when beyond 2 s.e.",
        "",
        *_commit_lines(summary),
        "| row | eval | seeds | FID mean | std | diff vs baseline | beyond spread | paired diff | ms/step | steps | images "
        "| what it tests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in summary["table"]:
        v = t.get("vs_baseline")
        diff = f"{v['diff']:+.2f} ± {v['se']:.2f}" if v else ""
        beyond = ("yes" if v["beyond_spread"] else "no") if v and v["se"] == v["se"] else ""
        paired = (
            f"{v['paired_diff']:+.2f} ± {v['paired_se']:.2f}{' yes' if v['paired_beyond'] else ''}"
            if v and "paired_diff" in v
            else ""
        )
        std = f"{t['fid_std']:.2f}" if t["fid_std"] == t["fid_std"] else "-"
        lines.append(
            f"| {t['row']} | {t['eval']} | {len(t['seeds'])} | {t['fid_mean']:.2f} | {std} | {diff} | {beyond} "
            f"| {paired} | {t['ms_per_step']:.0f} | {t['steps']} | {t['images']} | {t['note']} |"
        )
    return "\n".join(lines) + "\n"


def _commit_lines(summary: dict) -> list[str]:
    """Which commits the runs trained at, when that is not (only) the commit that wrote the table."""
    commits = sorted({c for t in summary["table"] for c in t.get("commits", [])})
    if not commits or commits == [summary["git_commit"]]:
        return []
    rows = {c: sorted({t["row"] for t in summary["table"] if c in t.get("commits", [])}) for c in commits}
    return ["Runs trained at: " + "; ".join(f"{c[:10]} ({', '.join(r)})" for c, r in rows.items()) + ".", ""]


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["table"]
    labels = [t["row"] if t["eval"] == "default" else f"{t['row']} [{t['eval']}]" for t in table]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    ys = list(range(len(table)))[::-1]
    for y, t in zip(ys, table):
        std = t["fid_std"] if t["fid_std"] == t["fid_std"] else 0.0
        ax.errorbar(t["fid_mean"], y, xerr=std, fmt="o", color="C0", capsize=3)
        ax.scatter(t["fid"], [y] * len(t["fid"]), color="C1", s=10, zorder=3)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("FID (mean ± std over seeds; dots: seeds)")
    ax.set_title(summary["title"] or summary["name"], fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(description: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--rows", default="", help="comma-separated row names to run (default: all)")
    p.add_argument("--workers", type=int, default=2, help="processes in parallel (one torch thread each)")
    p.add_argument("--fid-samples", type=int, default=1000)
    p.add_argument("--out", default="docs/results", help="folder for NAME.json / .md / .png")
    p.add_argument("--work", default=f"runs/sweeps/{name}", help="folder for per-run records, logs and run folders")
    p.add_argument("--smoke", action="store_true", help="tiny config, a few steps: checks the script runs")
    p.add_argument("--baseline", default="", help="row the differences are taken against (default: the script's)")
    p.add_argument(
        "--keep-weights",
        action="store_true",
        help="keep each run's final checkpoint in WORK/<row>-seed<k>/checkpoints (for benchmarks/probe.py)",
    )
    p.add_argument(
        "--summary-only",
        action="store_true",
        help="write the table from the finished runs in --work; run nothing (missing seeds are left out)",
    )
    return p


def select(rows: list[Row], names: str) -> list[Row]:
    if not names:
        return rows
    wanted = names.split(",")
    unknown = [n for n in wanted if n not in {r.name for r in rows}]
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose from {[r.name for r in rows]}")
    return [r for r in rows if r.name in wanted]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(run_child(json.loads(sys.argv[2]))))
