"""Where a run's numbers and pictures go (`train.loggers`): `metrics.jsonl` always, TensorBoard and
Weights & Biases on request.

`metrics.jsonl` is the source of truth: the curves (`plots.py`), the benchmarks and a resumed run
read it, so it is written whatever `train.loggers` says. TensorBoard and wandb receive the same
records (every numeric field as a scalar at the record's step) plus the sample grids as images, for
live dashboards on a cluster. Only rank 0 logs. Each optional backend is imported when the run
starts, so a missing package stops the run before training with the `pip install` that fixes it.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, config_to_dict
from ..errors import ConfigError
from ..runtime import atomic_write

TENSORBOARD_DIR = "tensorboard"
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}  # logger: (package, extra)


def _missing(name: str) -> ConfigError:
    package, extra = EXTRAS[name]
    return ConfigError(
        f"train.loggers includes {name}, but the {package} package is not installed: pip install "
        f"'sddit[{extra}]' (or pip install {package}), or remove {name} from train.loggers"
    )


def _png(path: Path) -> np.ndarray:
    """A PNG as uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class JsonlLogger:
    """Appends one JSON object per record to `metrics.jsonl`; an image is recorded by its path."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"

    def log(self, step: int, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")

    def image(self, step: int, tag: str, path: Path) -> None:
        path, root = Path(path).resolve(), self.run_dir.resolve()
        self.log(step, {tag: str(path.relative_to(root) if path.is_relative_to(root) else path)})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """`torch.utils.tensorboard` event files in `run_dir/tensorboard` (`tensorboard --logdir runs/`)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        # events after the resumed step were dropped from the files already (truncate_events)
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log(self, step: int, record: dict[str, Any]) -> None:
        for key, value in _numeric(record).items():
            self.writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, path: Path) -> None:
        self.writer.add_image(tag, _png(path), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run (project `train.wandb_project`, named after the run directory). Its id
    is kept in `run_dir/wandb_id.txt`, so a resumed training run continues the same wandb run."""

    def __init__(self, cfg: Config, run_dir: Path):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self.wandb = wandb
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.run = wandb.init(
            project=cfg.train.wandb_project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config_to_dict(cfg),
        )

    def log(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(_numeric(record), step=step)

    def image(self, step: int, tag: str, path: Path) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """Every configured logger behind one call; a no-op on ranks other than 0."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, step: int, record: dict[str, Any]) -> None:
        """One record (e.g. {"loss": ..., "lr": ...}) at `step`: a line of metrics.jsonl, scalars elsewhere."""
        for logger in self.loggers:
            logger.log(step, record)

    def image(self, step: int, tag: str, path: Path) -> None:
        for logger in self.loggers:
            logger.image(step, tag, path)

    def flush(self) -> None:
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def check_loggers(names: tuple[str, ...]) -> None:
    """Raise the one-line ConfigError for a requested logger whose package is missing (every rank, at start)."""
    for name in names:
        try:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            elif name == "wandb":
                import wandb  # noqa: F401
        except ImportError:
            raise _missing(name) from None


def build_loggers(cfg: Config, run_dir: Path, main: bool) -> Loggers:
    """metrics.jsonl plus the loggers `train.loggers` names, on the main rank; nothing elsewhere."""
    check_loggers(cfg.train.loggers)
    if not main:
        return Loggers([])
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers: list = [JsonlLogger(run_dir)]
    if "tensorboard" in cfg.train.loggers:
        loggers.append(TensorBoardLogger(run_dir))
    if "wandb" in cfg.train.loggers:
        loggers.append(WandbLogger(cfg, run_dir))
    return Loggers(loggers)


def truncate_events(run_dir: str | Path, step: int) -> int:
    """Drop the TensorBoard events with a step above `step` (and a torn last record) from the event
    files of run_dir/tensorboard, as `run_dir.truncate_metrics` does for metrics.jsonl, so a resumed
    run shows each step once. Why not SummaryWriter's purge_step: it only asks the viewer to hide
    them, which TensorBoard's newer data server and readers of the files (tbparse, pandas) ignore.
    Returns the number of events dropped (0 when tensorboard, needed to read them, is absent)."""
    folder = Path(run_dir) / TENSORBOARD_DIR
    files = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    if not files:
        return 0
    try:
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:
        return 0
    dropped = 0
    for path in files:
        data, keep, pos, gone = path.read_bytes(), [], 0, 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack_from("<Q", data, pos)
            end = pos + 12 + length + 4
            if end > len(data):
                break
            try:
                event_step = Event.FromString(data[pos + 12 : pos + 12 + length]).step
            except Exception:  # noqa: BLE001 - a damaged record: keep what came before it
                break
            if event_step <= step:
                keep.append(data[pos:end])
            else:
                gone += 1
            pos = end
        if gone or pos < len(data):
            with atomic_write(path) as f:
                f.write(b"".join(keep))
            dropped += gone
    return dropped
