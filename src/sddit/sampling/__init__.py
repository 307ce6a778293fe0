"""Sampling a trained denoiser: in memory and as class grids (`sample.py`), and to image files and
an ADM-format `.npz` for evaluation (`sddit generate`: `to_files.py`, from `sources.py`)."""

from .decode import LatentDecoder, decoder_for_config, find_vae, load_decoder
from .sample import class_grid, generate, grid_classes, quantize, sample_seeds, save_grid

__all__ = [
    "LatentDecoder",
    "class_grid",
    "decoder_for_config",
    "find_vae",
    "generate",
    "grid_classes",
    "load_decoder",
    "quantize",
    "sample_seeds",
    "save_grid",
]
