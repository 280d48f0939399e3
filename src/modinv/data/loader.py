"""Batching items of image sources: a collate that drops unusable items, and a seeded DataLoader
that counts the unusable files of each pass over the data and summarises them in one line."""

from __future__ import annotations

import functools
import random
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from modinv.data.base import DataWarning, ImageSource, Unusable
from modinv.errors import ModinvError

# Item keys whose values differ in length between images: kept as lists in a batch.
LIST_KEYS: frozenset[str] = frozenset({"boxes", "labels", "masks", "iscrowd", "name"})


def collate(batch: Sequence[dict[str, Any] | Unusable | None], size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Items -> one batch dict; unusable items (``None`` or :class:`Unusable`) are dropped and counted.

    ``"image"``: float32 B×3×H×W; ``"index"``, ``"image_id"``, ``"label"``: int64 B; ``"orig_size"``:
    int64 B×2; ``"boxes"``, ``"labels"``, ``"masks"``, ``"iscrowd"``, ``"name"``: lists of length B
    (per-image lengths differ); ``"skipped"``: how many items of this batch were dropped, and
    ``"skipped_files"``: ``{name: reason}`` of those that said why (:class:`Unusable`). B may be
    smaller than the batch size, even 0 when every item was unusable: then the batch holds only
    ``"image"`` (0×3×H×W when ``size`` is given), ``"index"``, ``"name"``, ``"skipped"`` and
    ``"skipped_files"``.
    """
    items = [item for item in batch if item is not None and not isinstance(item, Unusable)]
    skipped = len(batch) - len(items)
    skipped_files = {item.name: item.reason for item in batch if isinstance(item, Unusable)}
    if not items:
        shape = (0, 3, *size) if size is not None else (0, 3, 0, 0)
        return {"image": torch.zeros(shape), "index": torch.zeros(0, dtype=torch.int64), "name": [],
                "skipped": skipped, "skipped_files": skipped_files}
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
    out["skipped_files"] = skipped_files
    return out


def skipped_summary(skipped: Mapping[str, str], total: int, spec: str = "") -> str:
    """One line for the unusable files of a pass: how many of ``total``, where, and the first one."""
    where = f" in {spec}" if spec else ""
    name, reason = next(iter(skipped.items()))
    more = f", and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"skipped unusable image files: {len(skipped)} of {total}{where} (first {name}: {reason}{more})"


class SourceLoader(DataLoader):
    """A DataLoader whose passes count the files they could not use.

    During and after a pass (one ``for batch in loader``), ``loader.skipped`` maps every skipped
    file to its reason and ``loader.seen`` counts the items read; each batch carries its own in
    ``batch["skipped"]`` (count) and ``batch["skipped_files"]`` (``{name: reason}``), from any
    worker process, for a caller that logs them one by one. When a pass ends (or is abandoned)
    with skipped files, one :class:`~modinv.data.DataWarning` summarises them
    (:func:`skipped_summary`), instead of one warning per file.
    """

    skipped: dict[str, str]
    seen: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped, self.seen = {}, 0
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        try:
            for batch in batches:
                self.seen += int(batch["image"].shape[0]) + int(batch.get("skipped", 0))
                self.skipped.update(batch.get("skipped_files", {}))
                yield batch
        finally:
            if self.skipped:
                spec = getattr(_image_source(self.dataset), "spec", "")
                warnings.warn(skipped_summary(self.skipped, self.seen, spec), DataWarning, stacklevel=2)


class _Loading(Dataset):
    """``dataset`` as the loader reads it: an image source (possibly inside Subsets) answers with
    :meth:`ImageSource.load`, so that an unusable file arrives with its name and reason."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        inner, i = self.dataset, index
        while isinstance(inner, Subset):
            inner, i = inner.dataset, inner.indices[i]
        if isinstance(inner, ImageSource):
            return inner.load(i)
        item = self.dataset[index]
        return Unusable(f"item {index}", "the data set gave no item") if item is None else item


def make_loader(
    source: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> SourceLoader:
    """A :class:`SourceLoader` over ``source`` batching with :func:`collate`.

    The shuffle order comes from a generator seeded with ``seed`` (same seed, same order, epoch
    after epoch of the same run); workers' numpy/random states derive from it too. Memory is pinned
    when CUDA is available. Workers are not kept between epochs, so ``source.set_epoch(e)`` before
    an epoch reaches them. With ``sampler`` (e.g. a DistributedSampler), ``shuffle`` must be False.
    Unusable files are dropped from the batches, counted per batch and summarised once per pass.
    """
    if sampler is not None and shuffle:
        raise ModinvError("make_loader takes either shuffle=True or a sampler, not both (the sampler decides the order)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ModinvError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ModinvError(f"the number of data loader workers must be 0 or more, got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return SourceLoader(
        _Loading(source),
        batch_size=int(batch_size),
        shuffle=shuffle,
        sampler=sampler,
        num_workers=int(num_workers),
        collate_fn=functools.partial(collate, size=_source_size(source)),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )


def _image_source(dataset: Any) -> ImageSource | None:
    """The image source inside ``dataset`` (through the loader's view and Subsets), if any."""
    while dataset is not None and not isinstance(dataset, ImageSource):
        dataset = getattr(dataset, "dataset", None)
    return dataset


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
