"""sddit: SD-DiT, DiT and MaskDiT under one EDM training framework.

For notebooks: `sddit.load_pretrained(PATH)` (a release from `sddit export`, a checkpoint or a run
directory) and `sddit.sample(model, labels)`; see `sddit/api.py`. They are imported on first use,
so `import sddit` stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["load_pretrained", "sample", "Pretrained", "__version__"]


def __getattr__(name: str):
    if name in ("load_pretrained", "sample", "Pretrained"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sddit' has no attribute {name!r}")
