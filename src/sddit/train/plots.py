"""Curves people look at, written as PNGs next to `metrics.jsonl`."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: str | Path) -> list[Path]:
    """`loss_curve.png` (every logged loss term against step), `fid_curve.png` (FID against step) if
    FID was logged during training, `gradnorm.png` if gradient norms were, and `teacher.png` (SD-DiT's
    per-term teacher entropy and prototypes used: is each term alive?). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    written: list[Path] = []
    losses = [r for r in records if "loss" in r]
    if losses:
        keys = [k for k in losses[-1] if k == "loss" or k.startswith("loss_")]
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            pts = [(r["step"], r[k]) for r in losses if k in r]
            ax.plot(*zip(*pts), label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(run_dir.name)
        fig.tight_layout()
        fig.savefig(run_dir / "loss_curve.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "loss_curve.png")
    fids = [r for r in records if "fid" in r]
    if fids:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r["step"] for r in fids], [r["fid"] for r in fids], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(f"FID-{fids[-1].get('fid_samples', '?')}")
        ax.grid(alpha=0.3)
        ax.set_title(f"{run_dir.name}: FID during training")
        fig.tight_layout()
        fig.savefig(run_dir / "fid_curve.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "fid_curve.png")
    norms = [r for r in records if any(k.startswith("gradnorm_") for k in r)]
    if norms:
        keys = sorted({k for r in norms for k in r if k.startswith("gradnorm_")})
        terms = sorted({k.split("_")[1] for k in keys})
        parts = sorted({k.split("_", 2)[2] for k in keys})
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            _, term, part = k.split("_", 2)
            pts = [(r["step"], r[k]) for r in norms if r.get(k, 0) > 0]
            if pts:
                ax.plot(
                    *zip(*pts),
                    label=f"{term} -> {part}",
                    color=f"C{parts.index(part)}",
                    linestyle=("-", "--", ":", "-.")[terms.index(term) % 4],
                )
        ax.set_xlabel("step")
        ax.set_ylabel("gradient norm of the weighted loss term")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{run_dir.name}: which loss trains which part")
        fig.tight_layout()
        fig.savefig(run_dir / "gradnorm.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "gradnorm.png")
    teacher = [r for r in records if any(k.startswith("teacher_entropy_") for k in r)]
    if teacher:
        terms = [t for t in ("image", "patch") if any(f"teacher_entropy_{t}" in r for r in teacher)]
        fig, (ax_h, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
        for i, t in enumerate(terms):
            for ax, key in ((ax_h, f"teacher_entropy_{t}"), (ax_p, f"prototypes_used_{t}")):
                pts = [(r["step"], r[key]) for r in teacher if key in r]
                if pts:
                    ax.plot(*zip(*pts), label=t, color=f"C{i}")
        cfg_path = run_dir / "config.json"  # the run's K, for the uniform line
        k = json.loads(cfg_path.read_text()).get("model", {}).get("head_dim") if cfg_path.exists() else None
        if k:
            ax_h.axhline(math.log(k), color="k", linestyle=":", label=f"ln K = {math.log(k):.2f}")
        ax_h.set_ylabel("teacher entropy (nats; ln K = uniform, no signal)")
        ax_p.set_ylabel("prototypes the batch uses, exp H(mean p_T)")
        for ax in (ax_h, ax_p):
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{run_dir.name}: is each discriminative term alive?")
        fig.tight_layout()
        fig.savefig(run_dir / "teacher.png", dpi=120)
        plt.close(fig)
        written.append(run_dir / "teacher.png")
    return written
