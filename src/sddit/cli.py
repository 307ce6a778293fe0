"""`sddit` command line: train, sample, generate, eval, prepare, export.

`sddit train` with no arguments is the main job: it trains the default Fashion-MNIST config on
this machine, writes a class grid and prints the FID of the sampling EMA against the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Only light modules here: torch and what imports it load inside `main`, where a Ctrl-C in the
# seconds they take is one line, not a traceback.
from .config import load_config
from . import cli_args
from .cli_parser import build_parser
from .errors import ConfigError, one_line


def _device(name: str):
    from .runtime import resolve_device  # imports torch: only inside main

    return resolve_device(name)


def cmd_train(args: argparse.Namespace) -> int:
    from .models.vae import vae_reference
    from .train import train

    overrides = list(args.set)
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.vae is not None:
        overrides.append(f"eval.vae={vae_reference(args.vae)}")  # recorded in the checkpoints: absolute
    cfg = load_config(cli_args.train_config(args), overrides)
    from . import distributed as dist

    procs = dist.local_procs(cfg.train.cpu_procs, _device(cfg.device))
    if procs > 1:  # train.cpu_procs: this process only launches and waits
        return dist.launch_local(args.argv, procs)
    t0 = time.perf_counter()
    trainer = train(
        cfg,
        evaluate=not args.no_eval,  # the grid/FID needs (VAE, Inception, reference) load first
        allow_config_change=args.allow_config_change,
    )
    try:
        return _after_training(args, cfg, trainer, t0)
    finally:
        trainer.close()  # release the run directory


def _after_training(args: argparse.Namespace, cfg, trainer, t0: float) -> int:
    """The class grid and FID of the sampling EMA, written into the (still locked) run directory."""
    train_s = time.perf_counter() - t0
    from . import distributed as dist

    if args.no_eval or not dist.is_main():
        trainer.close()
        return 0
    run_dir = Path(cfg.run_dir)
    with dist.all_cores():  # the other ranks of a `train.cpu_procs` launch are done
        return _grid_and_fid(cfg, trainer, run_dir, train_s, t0)


def _grid_and_fid(cfg, trainer, run_dir: Path, train_s: float, t0: float) -> int:
    grid = trainer.monitor.grid(trainer.ema, run_dir / "samples.png", per_class=10)
    print(f"class grid (EMA, {cfg.eval.grid_steps} Heun steps, cfg {cfg.eval.grid_cfg_scale}): {grid}")
    if cfg.eval.num_samples > 0:
        result = trainer.monitor.fid(trainer.ema, cfg.eval.num_samples)
        result["train_seconds"] = round(train_s, 1)
        result["total_seconds"] = round(time.perf_counter() - t0, 1)
        (run_dir / "fid.json").write_text(json.dumps(result, indent=2))
        print(
            f"FID-{result['num_samples']} = {result['fid']:.2f} ({result['num_samples']} samples vs "
            f"{_reference_words(result, cfg)}; {result['steps']} Heun steps{_churn_words(result)}, "
            f"cfg {result['cfg_scale']}{_interval_words(result)}); train {train_s / 60:.1f} min, total {result['total_seconds'] / 60:.1f} min"
        )
    trainer.close()
    return 0


def _load_decoder(source, args: argparse.Namespace, device):
    """The VAE decoder of a latent sampling source (None for pixel models)."""
    from .sampling import load_decoder
    from .sampling.sources import resolve_vae

    if not source.latent:
        return None
    return load_decoder(*resolve_vae(source, args.vae, args.scale_factor), device, source.shape[0])


def _reference_words(result: dict, cfg, ref: str | None = None) -> str:
    """What an FID was measured against, for the printed line."""
    if ref or cfg.train.fid_ref:
        n = result["num_reference"]
        return (
            f"{n} reference images ({result['reference']})" if n else f"the reference statistics {result['reference']}"
        )
    return f"{result['num_reference']} {cfg.data.dataset} {result['reference']} images"


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import class_grid
    from .sampling.sources import load_source

    cli_args.at_least(args, 1, "per_class", "steps")
    cli_args.output_file(args.out, "--out", (".png", ".jpg", ".jpeg"))
    device = _device(args.device or "auto")
    source = load_source(args.checkpoint, device)
    classes = None
    if args.classes:
        try:
            classes = [int(c) for c in args.classes.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--classes expects comma-separated class indices, got {args.classes!r}") from None
        if not classes or min(classes) < 0 or max(classes) >= source.num_classes:
            raise ConfigError(f"--classes must be indices in [0, {source.num_classes})")
    decode = _load_decoder(source, args, device)
    src = Path(source.checkpoint)
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent.parent) / f"samples_seed{args.seed}.png"
    class_grid(
        source.net,
        source.num_classes,
        args.per_class,
        source.shape,
        out,
        seed=args.seed,
        num_steps=args.steps,
        cfg_scale=args.cfg_scale,
        device=device,
        classes=classes,
        decode=decode,
        sampler_kwargs=source.sampler_kwargs,
    )
    rows = len(classes) if classes else source.num_classes
    print(
        f"wrote {out} ({rows} classes x {args.per_class}, {args.steps} Heun steps, cfg {args.cfg_scale}, "
        f"seed {args.seed}" + (f", decoded by {decode.vae_id})" if decode is not None else ")")
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cli_args.at_least(args, 1, "steps", "batch_size")
    cli_args.writable_parent(args.json, "--json")
    if args.samples is not None:
        return _eval_files(args)
    if args.checkpoint is None:
        raise ConfigError("sddit eval needs a checkpoint (CKPT_OR_RUN_DIR) or --samples PATH --ref PATH")
    if args.cache_ref is not None:
        raise ConfigError("--cache-ref applies to --samples/--ref evaluation only")
    from .eval import evaluate_generator
    from .sampling.sources import load_source

    cli_args.at_least(args, 2, "num_samples")  # FID needs two samples at least
    device = _device(args.device or "auto")
    source = load_source(args.checkpoint, device)
    cfg = source.config
    if args.inception:
        cfg.eval.inception = args.inception
    if args.inception_precision:
        cfg.eval.inception_precision = args.inception_precision
    if args.cfg_interval is not None:  # validated as the config key is
        cfg.eval.cfg_interval = load_config(None, [f"eval.cfg_interval={args.cfg_interval}"]).eval.cfg_interval
    if args.churn is not None:
        cfg.eval.churn = load_config(None, [f"eval.churn={args.churn}"]).eval.churn
    result = evaluate_generator(
        source.net,
        cfg,
        num_samples=args.num_samples,
        device=device,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        batch_size=args.batch_size,
        decode=_load_decoder(source, args, device),
        ref=args.ref,
    )
    print(
        f"FID-{result['num_samples']} = {result['fid']:.2f} ({result['num_samples']} samples vs "
        f"{_reference_words(result, cfg, args.ref)}; "
        f"{result['steps']} Heun steps{_churn_words(result)}, cfg {result['cfg_scale']}{_interval_words(result)})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _churn_words(result: dict) -> str:
    return f" with S_churn {result['churn']:g}" if result.get("churn", 0) > 0 else ""


def _interval_words(result: dict) -> str:
    lo, hi = result.get("cfg_interval", (0.0, float("inf")))
    return "" if result["cfg_scale"] == 1 or (lo, hi) == (0.0, float("inf")) else f" at sigma in ({lo:g}, {hi:g}]"


def _eval_files(args: argparse.Namespace) -> int:
    """`sddit eval --samples PATH --ref PATH`: print every metric with its sample count."""
    from .eval import default_ref_cache_path, evaluate_sample_files

    if args.samples is None or args.ref is None:
        raise ConfigError("file evaluation needs both --samples PATH and --ref PATH")
    if args.checkpoint is not None:
        raise ConfigError("pass either a checkpoint or --samples/--ref, not both")
    device = _device(args.device or "auto")
    cache = None
    if args.cache_ref is not None:
        cache = default_ref_cache_path(args.ref) if args.cache_ref == "auto" else Path(args.cache_ref)
    r = evaluate_sample_files(
        args.samples,
        args.ref,
        inception=args.inception,
        device=device,
        batch_size=args.batch_size or 50,
        cache_ref=cache,
        precision=args.inception_precision or "fp32",
    )
    n = r["num_samples"]
    if r["num_reference_images"] is not None:
        ref = f"{r['num_reference_images']} reference images"
        ref += " (FID/sFID from the file's statistics)" if r["reference_stats"] == "file" else ""
    else:
        ref = "reference statistics"
    print(f"samples: {n} ({r['samples']}); reference: {r['ref']}")
    print(f"FID-{n} = {r['fid']:.3f} ({n} samples vs {ref})")
    sfid_note = next((x for x in r["notes"] if x.startswith("sFID:")), "sFID: n/a")
    print(f"sFID-{n} = {r['sfid']:.3f} ({n} samples)" if r["sfid"] is not None else sfid_note)
    if r["precision"] is not None:
        print(
            f"precision = {r['precision']:.4f}, recall = {r['recall']:.4f} ({n} samples vs "
            f"{r['num_reference_features']} reference images, k={r['k']})"
        )
    else:
        pr_note = next((x for x in r["notes"] if x.startswith("precision/recall:")), "precision/recall: n/a")
        print(f"{pr_note} ({n} samples)")
    if r["inception_score"] is not None:
        print(f"IS-{n} = {r['inception_score']:.2f} +- {r['inception_score_std']:.2f} ({n} samples)")
    else:
        print("IS: n/a (the Inception file has no logits)")
    for note in r["notes"]:
        if not note.startswith(("IS:", "sFID:", "precision/recall:")):
            print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """`sddit generate`: under torchrun each rank samples its share; rank 0 packs the .npz."""
    import torch

    from . import distributed as dist
    from .sampling.sources import load_official_source, load_source
    from .sampling.to_files import NPZ_NAME, generate_samples

    if (args.checkpoint is None) == (args.official_dit is None):
        raise ConfigError("sddit generate needs a checkpoint (CKPT_OR_RUN_DIR) or --official-dit PATH (one of them)")
    cli_args.at_least(args, 1, "num_samples", "steps", "batch_size")
    device = _device(args.device or "auto")
    started = not dist.is_dist()
    rank, world, _ = dist.init_from_env(str(device))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        if args.official_dit is not None:
            source = load_official_source(args.official_dit, args.model, args.image_size, device=device)
        else:
            source = load_source(args.checkpoint, device)
        meta = generate_samples(
            source,
            args.out,
            args.num_samples,
            seed=args.seed,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            balanced=args.balanced,
            batch_size=args.batch_size,
            precision=args.precision,
            device=device,
            vae=args.vae,
            scale_factor=args.scale_factor,
            resume=args.resume,
            log=print if rank == 0 else (lambda *a: None),
        )
    finally:
        if started and dist.is_dist():
            torch.distributed.destroy_process_group()
    if rank == 0:
        h, w, _ = meta["image_shape"]
        print(
            f"wrote {args.num_samples} samples ({h}x{w}, seeds {meta['seeds']}, {args.steps} Heun steps, cfg "
            f"{args.cfg_scale}, {args.precision}, {world} process{'es' if world > 1 else ''}) to "
            f"{Path(args.out) / 'images'} and {Path(args.out) / NPZ_NAME}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .config import config_from_dict
    from .pretrained import WEIGHTS_FILE, check_release_dir, export_pretrained
    from .sampling import find_vae

    check_release_dir(args.out, args.force)  # before loading anything
    ckpt = resolve_checkpoint(args.checkpoint)
    state = load_checkpoint(ckpt, map_location="cpu")
    state["_path"] = str(ckpt)
    cfg = config_from_dict(state["config"])
    vae = scale = origin = None
    if cfg.data.dataset == "latents":
        vae, scale, origin = find_vae(
            cfg.data.root, args.vae, args.scale_factor, recorded_vae=cfg.eval.vae or None, what=str(ckpt)
        )
    meta = export_pretrained(state, args.out, vae, scale, overwrite=args.force)
    out = Path(args.out)
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    print(
        f"wrote {out / WEIGHTS_FILE} ({size:.1f} MB: the sampling EMA of {ckpt.name}, step {meta['step']}) and "
        f"{out / 'config.json'}" + (f"; VAE {vae} ({origin}), scale factor {scale}" if vae else "")
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import PrepareOptions, merge, prepare

    if args.merge:
        m = merge(args.out, world_size=args.world_size, max_bad_fraction=args.max_bad_fraction)
        print(_describe(m, Path(args.out)))
        return 0
    env_world = int(os.environ.get("WORLD_SIZE", 1))
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", 0))
    world = args.world_size if args.world_size is not None else env_world
    device = str(_device(args.device))
    if device == "cuda" and world > 1 and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and args.rank is None
    opts = PrepareOptions(
        image_size=args.image_size,
        vae=args.vae,
        hflip_copies=not args.no_flip,
        batch_size=args.batch_size,
        device=device,
        shard_size=args.shard_size,
        max_bad_fraction=args.max_bad_fraction,
        scale_factor=args.scale_factor,
        min_size=args.min_size,
        dtype=args.dtype,
        num_workers=args.workers,
        resume=not args.no_resume,
        split=args.split,
    )
    s = prepare(
        args.root,
        args.out,
        opts,
        rank=rank,
        world_size=world,
        progress=not args.no_progress,
        wait_for_ranks=7 * 24 * 3600.0 if under_torchrun and world > 1 else 0.0,
    )
    c = s["counts"]
    print(
        f"rank {rank}/{world}: {c['images']} images -> {c['entries']} entries in {len(s['shards'])} shards "
        f"({c['bad']} unreadable, {c['too_small']} too small, {c['upscaled']} upscaled, "
        f"converted {c['converted'] or 'none'}) in {s['seconds']:.0f}s"
    )
    if "manifest" in s:
        print(_describe(s["manifest"], Path(args.out)))
    return 0


def _describe(m: dict, out: Path) -> str:
    from .data.latent_format import MANIFEST

    c = m["counts"]
    return (
        f"wrote {out / MANIFEST}: {c['entries']} entries ({c['images']} images + {c['flips']} flips) of "
        f"{m['num_classes']} classes, latents {tuple(m['latent_shape'])} at {m['resolution']}px, VAE {m['vae']}, "
        f"{c['bad']} unreadable, {c['too_small']} too small, {c['upscaled']} upscaled, converted {c['converted'] or 'none'}"
    )


def main(argv: list[str] | None = None) -> int:
    command = ""  # known once the arguments are parsed (a Ctrl-C may come while modules import)
    try:
        args = build_parser().parse_args(argv)  # imports torch (through the prepare parser's defaults)
        command = args.command
        args.argv = list(sys.argv[1:] if argv is None else argv)  # what `train.cpu_procs` relaunches
        import torch

        # Flush denormals to zero: tiny Adam moments and near-zero weights otherwise slow CPU math ~20x.
        torch.set_flush_denormal(True)
        cli_args.finite_numbers(args)
        cli_args.no_empty_paths(args)
        commands = {
            "train": cmd_train,
            "sample": cmd_sample,
            "eval": cmd_eval,
            "generate": cmd_generate,
            "prepare": cmd_prepare,
            "export": cmd_export,
        }
        return commands[command](args)
    except BaseException as e:  # noqa: BLE001 - what is the user's to fix becomes one line; the rest raises
        reported = one_line(e, command)
        if reported is None:
            raise
        return _fail(*reported)


def _fail(message: str, status: int) -> int:
    """Print `error: message` as the last line on stderr (after closing any progress bar)."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()  # a bar left open mid-line would otherwise share the error's line
    except Exception:  # noqa: BLE001 - best effort only
        pass
    print(f"error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
