"""A resumable, rank-aware data order: one seeded permutation per epoch."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation seeded by (seed, epoch), split across ranks.

    Unlike a plain shuffling sampler it can start part-way into an epoch (``skip`` samples per
    rank), so a resumed run sees exactly the batches the interrupted one would have seen.
    Every rank gets the same number of indices (the permutation is padded by wrapping around),
    as DDP needs equal batch counts.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    @property
    def per_rank(self) -> int:
        return -(-self.size // self.world_size)

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * (total // self.size + 1))[:total]
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.skip :])
