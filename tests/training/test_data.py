"""modinv.training.data.split_sources: the held-out share of one source, read once unless augmented."""

from __future__ import annotations

import torch

import modinv.training.data as training_data
from modinv.training.data import split_sources

SIZE = (32, 32)


def _count_opens(monkeypatch) -> list[bool]:
    opened: list[bool] = []
    real = training_data.open_source

    def counting(spec, size, augment=False, **options):
        opened.append(augment)
        return real(spec, size=size, augment=augment, **options)

    monkeypatch.setattr(training_data, "open_source", counting)
    return opened


def test_without_augmentation_the_source_is_opened_once(monkeypatch):
    opened = _count_opens(monkeypatch)
    train, val = split_sources("samples", SIZE, val_fraction=0.5, seed=3)
    assert opened == [False]
    assert len(train) + len(val) == len(train.dataset) and train.dataset is val.dataset
    assert not set(train.indices) & set(val.indices)


def test_held_out_items_are_never_augmented(monkeypatch):
    opened = _count_opens(monkeypatch)
    train, val = split_sources("samples", SIZE, val_fraction=0.5, augment=True, seed=3)
    assert opened == [True, False] and train.dataset is not val.dataset
    again = split_sources("samples", SIZE, val_fraction=0.5, augment=True, seed=3)[1]
    for i in range(len(val)):  # the same items, and unaugmented: identical on every read
        assert torch.equal(val[i]["image"], again[i]["image"])
    assert val.indices == again.indices
