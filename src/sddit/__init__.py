"""sddit: SD-DiT, DiT and MaskDiT under one EDM training framework."""

__version__ = "0.1.0"
