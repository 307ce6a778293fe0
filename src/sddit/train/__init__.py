"""Training: the loop (`trainer.py`), the sampling EMA (`ema.py`), the learning-rate schedule
(`schedules.py`) and the curves drawn from `metrics.jsonl` (`plots.py`)."""

from .trainer import Trainer, train

__all__ = ["Trainer", "train"]
