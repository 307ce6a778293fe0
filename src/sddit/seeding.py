"""Every random stream of a training run, in one place (docs/randomness.md explains the design).

Exact resume and "N processes compute what one process computes" both rest on one rule: a random
draw is keyed on *what it is for* and on the step or epoch it belongs to, never on how many draws
came before it in the process. So each stream below is a fresh generator seeded from
(train.seed, key), or, for the few draws that use the global generators, their state is saved in
every checkpoint. The multipliers only keep the keys of different streams apart; they are primes
larger than any step or epoch count, so (seed, key) pairs never collide within a stream.
"""

from __future__ import annotations

import random

import numpy as np
import torch

STEP_STRIDE = 1_000_003  # step noise: seed * STEP_STRIDE + step
EPOCH_STRIDE = 100_003  # data order: seed * EPOCH_STRIDE + epoch
RANK_STRIDE = 1000  # per-rank global streams: seed * RANK_STRIDE + rank


def init_weights_seed(seed: int) -> None:
    """Seed the global generators before the networks are built: every rank gets the same weights
    (student, teacher and sampling EMA are copies of them)."""
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, device: torch.device | str) -> torch.Generator:
    """The generator of one training step: noise levels, noise, label drops and masks, drawn for the
    GLOBAL batch (each rank keeps its rows). Keyed on the step, so a resumed run draws what the
    uninterrupted run drew, whatever the world size."""
    return torch.Generator(device).manual_seed(seed * STEP_STRIDE + step)


def epoch_permutation(seed: int, epoch: int, size: int) -> torch.Tensor:
    """The data order of one epoch: a permutation of `size` indices keyed on (seed, epoch)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * EPOCH_STRIDE + epoch))


def seed_rank_streams(seed: int, rank: int) -> None:
    """Seed this rank's global torch / numpy / random generators, which draw what the step generator
    does not: horizontal flips and latent posterior samples. Their states go into every checkpoint
    (`rng_state`), so a resume continues them exactly."""
    s = seed * RANK_STRIDE + rank
    torch.manual_seed(s)
    np.random.seed(s % (1 << 32))
    random.seed(s)


def rng_state() -> dict:
    """The global generators' states (saved per rank in checkpoints), as tensors and plain Python
    values only, so a checkpoint loads with `torch.load(weights_only=True)` and no allow-list:
    numpy's state tuple (which holds an ndarray) is stored as a dict of a tensor and numbers."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_state_from_tuple(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def numpy_state_from_tuple(state: tuple) -> dict:
    """`np.random.get_state()`'s tuple (also what checkpoint formats 1 and 2 stored) as plain values."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return {
        "algorithm": str(name),
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),  # (624,) uint32 values
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (numpy's state as the dict above, or as the raw tuple)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        keys = np_state["keys"].cpu().numpy().astype(np.uint32)
        np_state = (np_state["algorithm"], keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(np_state)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def reference_subset(size: int, num: int) -> torch.Tensor:
    """The real images FID compares against: the first `num` of a fixed permutation (seed 0) of the
    reference split, the same for every run, method and machine."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:num]
