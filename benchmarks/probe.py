"""Linear probe of what a trained network's blocks know about the class: the direct measure of what
SD-DiT's discriminative loss should change (its encoder's features), before any FID.

For each block of a checkpoint's sampling EMA (DiT: its blocks; split models: encoder then decoder
blocks), the block's output tokens on a noisy image x0 + sigma * eps are pooled into one feature
vector per image, and a logistic regression is fit on train-set features and scored on the test set.
The network gets the **null label** (the CFG class), so the class cannot enter through adaLN; a fixed
eps per image and a few fixed noise levels make every model see the same inputs. Two poolings:
`mean` (the mean over the patch tokens, as SSL probes do) and `spatial` (the tokens concatenated,
T x D features: what mean-pooling may hide). The `raw` row is the same regression on the noisy
pixels themselves, the floor a representation has to beat (the issue's calibration: 78.1% at sigma
0.1 and 75.6% at sigma 0.5 on the first 2,000 train / 2,000 test images of Fashion-MNIST).

    python benchmarks/probe.py --sweep runs/sweeps/ablation_r3 --rows r3-dit,r3-sddit,r3-mean --seeds 0,1,2,3
    python benchmarks/probe.py --runs runs/fmnist_dit runs/fmnist_sddit   # one row per run directory
    python benchmarks/probe.py --smoke --runs RUN                         # 60 images: checks the script runs

Writes OUT/probe.{json,md,png}: a `table` with one entry per row (`row`, `seeds`, `probe_acc`: per
seed the test accuracy of the block with the best validation accuracy, at the reported noise
level, mean pooling) and the per-block accuracies behind it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import write_result

REPORTED_SIGMA = 0.5


@torch.no_grad()
def block_features(
    net: torch.nn.Module, x: torch.Tensor, sigma: float, null_label: int, batch: int = 250
) -> list[torch.Tensor]:
    """Per block, the output tokens of every image: a list of (N, T, D) tensors (patch tokens only)."""
    model = net.model
    blocks = [*model.blocks, *(getattr(model, "decoder_blocks", None) or [])]
    n_skip = int(getattr(model, "cls_token", None) is not None)  # the [CLS] token is not a patch token
    n_enc = len(model.blocks)
    outs: list[list[torch.Tensor]] = [[] for _ in blocks]
    captured: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: captured.append(o.float())) for b in blocks]
    try:
        for i in range(0, len(x), batch):
            captured.clear()
            xb = x[i : i + batch]
            y = torch.full((len(xb),), null_label, dtype=torch.long)
            net(xb, torch.full((len(xb),), sigma), y)
            for k, o in enumerate(captured):
                outs[k].append(o[:, n_skip:] if k < n_enc else o)  # (B, T, D)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def _fit_score(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=500, C=1.0)
    clf.fit(scaler.transform(train_x), train_y)
    return float(clf.score(scaler.transform(x), y))


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> tuple[float, float]:
    """(validation, test) accuracy of a standardised multinomial logistic regression: validation
    from a fit on the first 3/4 of the train features scored on the last 1/4 (it picks the best
    block without looking at the test set), test from a fit on all of them."""
    n_fit = 3 * len(train_x) // 4
    val = _fit_score(train_x[:n_fit], train_y[:n_fit], train_x[n_fit:], train_y[n_fit:])
    return val, _fit_score(train_x, train_y, test_x, test_y)


def probe_data(data_cfg, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The first n train and n test images of the run's dataset in [-1, 1], labels, and a fixed eps each."""
    from sddit.data import build_dataset

    d = data_cfg
    tr, te = (build_dataset(d.dataset, d.root, split, d.resolution) for split in ("train", "test"))
    n = min(n, len(tr), len(te))
    (xtr, ytr), (xte, yte) = tr.batch(torch.arange(n)), te.batch(torch.arange(n))
    g = torch.Generator().manual_seed(seed)
    return xtr, ytr, xte, yte, torch.randn(xtr.shape, generator=g), torch.randn(xte.shape, generator=g)


def probe_run(net: torch.nn.Module, null_label: int, data: tuple, sigmas: list[float], spatial: bool) -> dict:
    """{sigma: {"mean": [acc per block], "spatial": [...]}} for one network."""
    xtr, ytr, xte, yte, etr, ete = data
    result = {}
    for sigma in sigmas:
        ftr = block_features(net, xtr + sigma * etr, sigma, null_label)
        fte = block_features(net, xte + sigma * ete, sigma, null_label)
        pools = {"mean": lambda f: f.mean(1).numpy()}
        if spatial and sigma == REPORTED_SIGMA:
            pools["spatial"] = lambda f: f.flatten(1).numpy()
        entry = {}
        for pool, feats in pools.items():
            val, test = zip(*(probe_accuracy(feats(a), ytr.numpy(), feats(b), yte.numpy()) for a, b in zip(ftr, fte)))
            entry[pool], entry[f"{pool}_val"] = list(test), list(val)
        result[str(sigma)] = entry
    return result


def cached_probe(path: Path, src, data: tuple, sigmas: list[float], spatial: bool) -> dict:
    """`probe_run`, kept in RUN/probe_cache.json keyed by the checkpoint and the protocol, so a table
    over many runs can be rebuilt (or grown by a seed) without probing the same weights again."""
    import json

    ckpt = Path(src.checkpoint)
    key = json.dumps(
        {
            "checkpoint": ckpt.name,
            "bytes": ckpt.stat().st_size,
            "mtime": ckpt.stat().st_mtime_ns,
            "images": len(data[0]),
            "sigmas": sigmas,
            "spatial": spatial,
        }
    )
    cache = (path if path.is_dir() else ckpt.parent) / "probe_cache.json"
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in stored:
        stored[key] = probe_run(src.net.eval(), src.null_label, data, sigmas, spatial)
        cache.write_text(json.dumps(stored))
    return stored[key]


def raw_pixels(data: tuple, sigmas: list[float]) -> dict[str, float]:
    """Test accuracy on the noisy pixels themselves (all of them: compare with the spatial probe)."""
    xtr, ytr, xte, yte, etr, ete = data
    return {
        str(s): probe_accuracy(
            (xtr + s * etr).flatten(1).numpy(), ytr.numpy(), (xte + s * ete).flatten(1).numpy(), yte.numpy()
        )[1]
        for s in sigmas
    }


def best(per_seed: dict, pool: str) -> tuple[float, int]:
    """(test accuracy, 1-based block) of the block with the best validation accuracy."""
    i = int(np.argmax(per_seed[f"{pool}_val"]))
    return per_seed[pool][i], i + 1


def summarize(rows: dict[str, dict[int, dict]], raw: dict[str, float], sigmas: list[float]) -> list[dict]:
    """The `table`: per row, per seed the test accuracy of the block with the best validation
    accuracy (mean pooling, reported sigma); the same for the spatial probe."""
    table = []
    key = str(REPORTED_SIGMA)
    for name, by_seed in rows.items():
        seeds = sorted(by_seed)
        acc, blocks = zip(*(best(by_seed[s][key], "mean") for s in seeds))
        entry = {
            "row": name,
            "seeds": seeds,
            "sigma": REPORTED_SIGMA,
            "pooling": "mean",
            "probe_acc": list(acc),
            "probe_acc_mean": statistics.fmean(acc),
            "probe_acc_std": statistics.stdev(acc) if len(acc) > 1 else float("nan"),
            "best_block": list(blocks),
            "per_block": {
                str(sg): {p: [by_seed[s][str(sg)][p] for s in seeds] for p in by_seed[seeds[0]][str(sg)]}
                for sg in sigmas
            },
        }
        if "spatial" in by_seed[seeds[0]][key]:
            sp = [best(by_seed[s][key], "spatial")[0] for s in seeds]
            entry.update(probe_acc_spatial=sp, probe_acc_spatial_mean=statistics.fmean(sp))
        table.append(entry)
    table.append(
        {
            "row": "raw-pixels",
            "seeds": [],
            "sigma": REPORTED_SIGMA,
            "pooling": "none (all pixels)",
            "probe_acc": [raw[key]],
            "probe_acc_mean": raw[key],
            "per_sigma": raw,
        }
    )
    return table


def paired_vs(table: list[dict], baseline: str) -> None:
    """Each row's per-seed difference to the baseline row on shared seeds, mean ± s.e., for the
    mean-pooled and the spatial probe (in place)."""
    base = next((t for t in table if t["row"] == baseline), None)
    if base is None:
        return
    for key, out in (("probe_acc", "paired_vs_baseline"), ("probe_acc_spatial", "paired_vs_baseline_spatial")):
        by_seed = dict(zip(base["seeds"], base.get(key, [])))
        for t in table:
            d = [a - by_seed[s] for s, a in zip(t["seeds"], t.get(key, [])) if s in by_seed]
            if t is base or len(d) < 2:
                continue
            mean, se = statistics.fmean(d), statistics.stdev(d) / len(d) ** 0.5
            t[out] = {"diffs": d, "mean": mean, "se": se, "beyond_2se": bool(abs(mean) > 2 * se)}


def markdown(summary: dict) -> str:
    lines = [
        f"# {summary['title']}",
        "",
        f"`{summary['command']}` at commit {summary['git_commit']}, {summary['machine']}, {summary['date']}.",
        "",
        summary["protocol"],
        "",
        f"| row | seeds | best block acc, mean pool (sigma {REPORTED_SIGMA}) | spatial (concat) | best block "
        f"| paired vs {summary['baseline']} | spatial, paired |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in summary["table"]:
        acc = ", ".join(f"{100 * a:.1f}" for a in t["probe_acc"])
        mean = f"{100 * t['probe_acc_mean']:.1f}" + (
            f" ± {100 * t['probe_acc_std']:.1f}"
            if t.get("probe_acc_std", 0) == t.get("probe_acc_std", 0) and len(t["probe_acc"]) > 1
            else ""
        )
        sp = f"{100 * t['probe_acc_spatial_mean']:.1f}" if "probe_acc_spatial_mean" in t else ""
        if t["row"] == "raw-pixels":  # all pixels: the spatial probe's floor
            mean, acc, sp = "", "", f"{100 * t['probe_acc_mean']:.1f}"
        paired, paired_sp = (
            f"{100 * v['mean']:+.1f} ± {100 * v['se']:.1f}{' yes' if v['beyond_2se'] else ''}"
            if (v := t.get(k))
            else ""
            for k in ("paired_vs_baseline", "paired_vs_baseline_spatial")
        )
        cell = f"{mean} ({acc})" if acc else "-"
        lines.append(
            f"| {t['row']} | {len(t['seeds']) or '-'} | {cell} | {sp} | "
            f"{', '.join(map(str, t.get('best_block', []))) or '-'} | {paired} | {paired_sp} |"
        )
    raw = next(t for t in summary["table"] if t["row"] == "raw-pixels")
    lines += [
        "",
        "Raw noisy pixels by sigma: " + ", ".join(f"{s}: {100 * a:.1f}%" for s, a in raw["per_sigma"].items()),
        "",
        "The best block is the one with the best validation accuracy (a fit on the first 3/4 of the "
        "train images scored on the last 1/4); its test accuracy is reported. Per-block test accuracy "
        "(mean over seeds), by sigma and pooling:",
        "",
    ]
    for t in summary["table"]:
        for sg, d in t.get("per_block", {}).items():
            for pool, per_seed in d.items():
                if pool.endswith("_val"):
                    continue
                blocks = np.mean(np.array(per_seed), axis=0)
                lines.append(f"- {t['row']}, sigma {sg}, {pool}: " + " ".join(f"{100 * a:.1f}" for a in blocks))
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = str(REPORTED_SIGMA)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, t in enumerate(t for t in summary["table"] if "per_block" in t):
        acc = np.array(t["per_block"][key]["mean"])  # (seeds, blocks)
        blocks = np.arange(1, acc.shape[1] + 1)
        ax.errorbar(blocks + 0.04 * i, 100 * acc.mean(0), yerr=100 * acc.std(0), marker="o", capsize=3, label=t["row"])
    raw = next(t for t in summary["table"] if t["row"] == "raw-pixels")
    ax.axhline(100 * raw["probe_acc_mean"], color="k", linestyle=":", label="raw noisy pixels (all 784)")
    ax.set_xlabel("block (split models: encoder blocks, then decoder blocks)")
    ax.set_ylabel(f"linear probe test accuracy, % (sigma {REPORTED_SIGMA}, mean pool)")
    ax.set_title(summary["title"], fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default="", help="a sweep's --work folder whose runs kept their weights (--keep-weights)")
    p.add_argument("--rows", default="", help="comma-separated rows of --sweep")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of --sweep")
    p.add_argument("--runs", nargs="*", default=[], help="run directories or checkpoints, one row each")
    p.add_argument("--baseline", default="", help="row the paired differences are taken against (default: the first)")
    p.add_argument("--sigmas", default="0.1,0.5,1.0", help=f"noise levels (the table reports {REPORTED_SIGMA})")
    p.add_argument("--images", type=int, default=2000, help="train and test images each")
    p.add_argument("--no-spatial", action="store_true", help="skip the concatenated-token probe")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="probe")
    p.add_argument("--smoke", action="store_true", help="60 images: checks the script runs (tests)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    from sddit.sampling.sources import load_source

    sigmas = [float(s) for s in args.sigmas.split(",")]
    if REPORTED_SIGMA not in sigmas:
        raise SystemExit(f"error: --sigmas must include the reported noise level {REPORTED_SIGMA}")
    jobs: list[tuple[str, int, Path]] = []  # (row, seed, checkpoint or run dir)
    if args.sweep:
        for row in args.rows.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                jobs.append((row, seed, Path(args.sweep) / f"{row}-seed{seed}"))
    jobs += [(Path(r).name, 0, Path(r)) for r in args.runs]
    names = [(row, seed) for row, seed, _ in jobs]
    if len(set(names)) != len(names):
        raise SystemExit("error: two --runs have the same folder name; give each run directory its own name")
    if args.smoke:
        args.images = 60
    if not jobs:
        raise SystemExit("error: nothing to probe: give --sweep DIR --rows R --seeds S, or --runs DIR [DIR ...]")

    def has_weights(path: Path) -> bool:
        return path.is_file() or any((path / "checkpoints").glob("ckpt-*.pt"))

    if args.sweep:  # a grid may have rows that ran fewer seeds: probe what is there, say what is not
        absent = [f"{row} seed {seed}" for row, seed, path in jobs if not path.exists()]
        if absent:
            print(f"note: not in the sweep (not run): {', '.join(absent)}", file=sys.stderr)
        jobs = [j for j in jobs if j[2].exists()]
    missing = [str(path) for _, _, path in jobs if not has_weights(path)]
    if missing or not jobs:
        raise SystemExit(
            f"error: no weights in: {', '.join(missing) or 'any run'} (a sweep keeps weights only with --keep-weights)"
        )
    t0 = time.time()
    rows: dict[str, dict[int, dict]] = {}
    data, dataset = None, None
    for row, seed, path in tqdm(jobs, desc="probe", unit="model"):
        src = load_source(path)
        d = src.config.data
        if data is None:  # every model is probed on the first one's dataset
            data, dataset = probe_data(d, args.images), (d.dataset, d.resolution)
        if (d.dataset, d.resolution) != dataset:
            raise SystemExit(f"error: {path} was trained on {d.dataset}, the others on {dataset[0]}: probe them apart")
        rows.setdefault(row, {})[seed] = cached_probe(path, src, data, sigmas, not args.no_spatial)
    args.images = len(data[0])
    raw = raw_pixels(data, sigmas)
    table = summarize(rows, raw, sigmas)
    paired_vs(table, args.baseline or table[0]["row"])
    protocol = (
        f"{dataset[0]}, the first {args.images} train images fit a standardised logistic regression "
        f"(sklearn, C=1, 500 iterations) on each block's features, scored on the first {args.images} test "
        f"images; inputs x0 + sigma * eps with one fixed eps per image, the null label, the sampling EMA. "
        f"Reported: per seed the test accuracy of the block with the best validation accuracy at sigma "
        f"{REPORTED_SIGMA}, mean-pooled patch tokens; "
        f"'spatial' concatenates the tokens. {time.time() - t0:.0f} s."
    )
    out = Path(args.out)
    summary = {
        "name": args.name,
        "title": f"Linear probe of the trained networks' blocks ({dataset[0]})",
        "baseline": args.baseline or table[0]["row"],
        "protocol": protocol,
        "sigmas": sigmas,
        "images": args.images,
        "table": table,
    }
    write_result(out / f"{args.name}.json", sys.argv, **summary)
    import json

    summary = json.loads((out / f"{args.name}.json").read_text())
    (out / f"{args.name}.md").write_text(markdown(summary))
    plot(summary, out / f"{args.name}.png")
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
