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
