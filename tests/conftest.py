import os

import pytest
import torch

# Keep CPU tests from oversubscribing a small machine (OMP_NUM_THREADS=1 when other jobs share it:
# spinning OpenMP threads made steps ~50x slower next to two busy processes).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1))
# Denormal floats (tiny Adam moments, near-zero weights) make CPU arithmetic ~20x slower.
torch.set_flush_denormal(True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Reference FID statistics are cached per test session, never in the user's ~/.cache."""
    monkeypatch.setenv("SDDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """A randomly initialised diffusers AutoencoderKL saved locally (8x down-sampling, 4 latent channels),
    as in test_prepare.py: latent runs are decoded through it end to end without the network."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    path = tmp_path_factory.mktemp("tiny_vae") / "vae"
    vae.save_pretrained(path)
    return path
