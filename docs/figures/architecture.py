"""Draws docs/figures/architecture.png, the README's figure of SD-DiT's training step.

python docs/figures/architecture.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_suffix(".png")


def box(ax, x, y, w, h, text, color, style="-"):
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="0.2", lw=1.2, ls=style)
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)


def arrow(ax, a, b, text="", style="-|>", ls="-", color="0.2", dx=0.0, dy=0.12):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, lw=1.2, ls=ls, color=color))
    if text:
        ax.text((a[0] + b[0]) / 2 + dx, (a[1] + b[1]) / 2 + dy, text, ha="center", va="bottom", fontsize=8, color=color)


def main() -> None:
    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 5.4)
    ax.axis("off")
    student, teacher, shared, loss = "#cfe2f3", "#fce5cd", "#d9ead3", "#f4cccc"
    # inputs
    box(ax, 0.1, 3.55, 2.3, 1.0, "x + sigma_S n\n(noisy image,\n20% tokens masked)", shared)
    box(ax, 0.1, 0.55, 2.3, 1.0, "x + sigma_T n\n(same x, same n,\nsigma_T = sigma_min)", shared)
    # student
    box(ax, 3.0, 3.55, 2.2, 1.0, "student encoder\n(DiT blocks, [CLS])", student)
    box(ax, 6.0, 3.55, 2.2, 1.0, "decoder\n(all tokens,\nmask tokens filled)", student)
    box(ax, 9.0, 3.55, 2.8, 1.0, "EDM loss L_gen\n(denoised vs x)", loss)
    # teacher
    box(ax, 3.0, 0.55, 2.2, 1.0, "teacher encoder\n(EMA of student,\nno gradient)", teacher, style="--")
    box(ax, 6.0, 0.55, 2.2, 1.0, "teacher head\n(EMA), centered,\nsharpened", teacher, style="--")
    box(ax, 6.0, 2.05, 2.2, 1.0, "student head\n(DINO MLP,\nK prototypes)", student)
    box(ax, 9.0, 1.3, 2.8, 1.0, "L_D: cross-entropy\n[CLS] + patch tokens\n(DINO / iBOT)", loss)
    arrow(ax, (2.4, 4.05), (3.0, 4.05))
    arrow(ax, (5.2, 4.05), (6.0, 4.05))
    arrow(ax, (8.2, 4.05), (9.0, 4.05))
    arrow(ax, (2.4, 1.05), (3.0, 1.05))
    arrow(ax, (5.2, 1.05), (6.0, 1.05))
    arrow(ax, (5.2, 3.75), (6.0, 2.55))
    arrow(ax, (8.2, 2.55), (9.0, 2.0), "p_S", dy=0.05)
    arrow(ax, (8.2, 1.05), (9.0, 1.6), "p_T", dx=0.05, dy=-0.35)
    arrow(ax, (4.1, 3.55), (4.1, 1.55), "EMA", ls="--", color="#b45f06", dx=0.35, dy=-0.1)
    ax.text(9.0, 5.0, "L = L_gen + lambda_D L_D", fontsize=10, weight="bold")
    ax.text(0.1, 5.0, "SD-DiT training step", fontsize=10, weight="bold")
    ax.text(
        0.1,
        0.08,
        "Inference: student encoder + decoder on all tokens; the teacher and both heads are dropped.",
        fontsize=8.5,
        color="0.3",
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
