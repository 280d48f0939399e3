"""Batching items of image sources: a collate that drops unusable items, and a seeded DataLoader."""

from __future__ import annotations

import functools
import random
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from modinv.errors import ModinvError

# Item keys whose values differ in length between images: kept as lists in a batch.
LIST_KEYS: frozenset[str] = frozenset({"boxes", "labels", "masks", "iscrowd", "name"})


def collate(batch: Sequence[dict[str, Any] | None], size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Items -> one batch dict; ``None`` items (unusable files) are dropped and counted.

    ``"image"``: float32 B×3×H×W; ``"index"``, ``"image_id"``, ``"label"``: int64 B; ``"orig_size"``:
    int64 B×2; ``"boxes"``, ``"labels"``, ``"masks"``, ``"iscrowd"``, ``"name"``: lists of length B
    (per-image lengths differ); ``"skipped"``: how many items of this batch were dropped. B may be
    smaller than the batch size, even 0 when every item was unusable: then the batch holds only
    ``"image"`` (0×3×H×W when ``size`` is given), ``"index"``, ``"name"`` and ``"skipped"``.
    """
    items = [item for item in batch if item is not None]
    skipped = len(batch) - len(items)
    if not items:
        shape = (0, 3, *size) if size is not None else (0, 3, 0, 0)
        return {"image": torch.zeros(shape), "index": torch.zeros(0, dtype=torch.int64), "name": [], "skipped": skipped}
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in LIST_KEYS:
            out[key] = values
        elif all(isinstance(v, Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        elif all(isinstance(v, (bool, int, np.integer)) for v in values):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif all(isinstance(v, (float, np.floating)) for v in values):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    out["skipped"] = skipped
    return out


def make_loader(
    source: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader over ``source`` batching with :func:`collate`.

    The shuffle order comes from a generator seeded with ``seed`` (same seed, same order, epoch
    after epoch of the same run); workers' numpy/random states derive from it too. Memory is pinned
    when CUDA is available. Workers are not kept between epochs, so ``source.set_epoch(e)`` before
    an epoch reaches them. With ``sampler`` (e.g. a DistributedSampler), ``shuffle`` must be False.
    """
    if sampler is not None and shuffle:
        raise ModinvError("make_loader takes either shuffle=True or a sampler, not both (the sampler decides the order)")
    if batch_size < 1:
        raise ModinvError(f"batch size must be at least 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        source,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size=_source_size(source)),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )


def _source_size(source: Any) -> tuple[int, int] | None:
    while source is not None:
        if hasattr(source, "size") and isinstance(source.size, tuple):
            return source.size
        source = getattr(source, "dataset", None)  # torch Subset and friends
    return None


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
