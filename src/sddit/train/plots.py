"""Curves people look at, written as PNGs next to `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: str | Path) -> list[Path]:
    """`loss_curve.png` (every logged loss term against step), `fid_curve.png` (FID against step) if
    FID was logged during training, and `gradnorm.png` if gradient norms were. Returns the files written."""
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
                ax.plot(*zip(*pts), label=f"{term} -> {part}", color=f"C{parts.index(part)}",
                        linestyle=("-", "--", ":", "-.")[terms.index(term) % 4])
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
    return written
