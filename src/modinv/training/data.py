"""Training and validation data of a run: the split, the batches and the per-epoch augmentation."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from modinv.data import open_source
from modinv.errors import ModinvError


def split_sources(data: str, size: tuple[int, int], *, val_data: str | None = None, val_fraction: float = 0.1,
                  augment: bool = False, seed: int = 0, **options: Any) -> tuple[Dataset, Dataset | None]:
    """``(train, validation)`` data sets of the source specs ``data`` / ``val_data``.

    Without ``val_data`` a ``val_fraction`` share of ``data`` is held out (at least one item when the
    fraction is positive and there are two or more), chosen by a permutation seeded with ``seed`` so
    that a resumed run holds out the same items; the held-out items are never augmented.
    ``options`` go to every :func:`modinv.data.open_source` call (e.g. ``masks=False``).
    """
    train = open_source(data, size=size, augment=augment, seed=seed, **options)
    if val_data:
        return train, open_source(val_data, size=size, **options)
    if not 0 <= val_fraction < 1:
        raise ModinvError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    n = len(train)
    n_val = min(max(round(n * val_fraction), 1 if val_fraction > 0 and n > 1 else 0), n - 1)
    if n_val <= 0:
        return train, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    plain = open_source(data, size=size, **options) if augment else train  # read once unless augmented
    return Subset(train, order[n_val:]), Subset(plain, order[:n_val])


def usable_batches(loader: DataLoader, on_skipped: Callable[[str, str], None] | None = None
                   ) -> Iterator[dict[str, Any]]:
    """Batches of a loader built with :func:`modinv.data.make_loader`, without empty ones
    (a batch whose every file was unreadable); ``on_skipped(path, reason)`` hears of every file
    a batch skipped."""
    for batch in loader:
        if on_skipped is not None:
            for path, reason in batch.get("skipped_files", {}).items():
                on_skipped(path, reason)
        if batch["image"].shape[0]:
            yield batch


def set_data_epoch(dataset: Dataset | None, epoch: int) -> None:
    """Tell an augmenting source (possibly inside a Subset) which epoch it serves: new crops each epoch."""
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
            return
        dataset = getattr(dataset, "dataset", None)
