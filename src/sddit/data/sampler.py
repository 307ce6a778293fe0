"""A seeded, rank-sharded, resumable batch sampler: its whole state is (epoch, position), which is
what makes resume exact without a DataLoader."""

from __future__ import annotations

import torch

from ..errors import DataError
from ..seeding import epoch_permutation


class EpochSampler:
    """Seeded shuffling sampler: each epoch is a fresh permutation of the dataset, split across ranks.

    The global batch of step k is the same whatever the world size (rank r takes its slice of it), so
    one process and N processes see the same data, and (epoch, position) is the whole resume state.
    Incomplete tail batches are dropped.
    """

    def __init__(self, size: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        if size < global_batch:
            raise DataError(f"dataset has {size} samples, fewer than one batch of {global_batch}")
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return epoch_permutation(self.seed, epoch, self.size)

    def next(self) -> torch.Tensor:
        """Indices of this rank's share of the next global batch."""
        if self.position + self.global_batch > self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        per_rank = self.global_batch // self.world_size
        start = self.position + self.rank * per_rank
        self.position += self.global_batch
        return self._perm[start : start + per_rank]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._perm = self._permutation(self.epoch)
