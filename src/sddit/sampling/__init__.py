"""Sampling a trained denoiser: in memory and as class grids (`sample.py`), and to image files and
an ADM-format `.npz` for evaluation (`sddit generate`: `to_files.py`, from `sources.py`)."""

from .sample import class_grid, generate, quantize, sample_seeds, save_grid

__all__ = ["class_grid", "generate", "quantize", "sample_seeds", "save_grid"]
