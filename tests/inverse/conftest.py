"""Fixtures of the modinv.inverse tests: the fake staged models of ``inverse_fakes`` (seeded,
frozen, one per test module), one intra-op thread, and the real adapters with their declared
inverse family."""

from __future__ import annotations

import pytest
from inverse_fakes import FakeDetr, FakeVit, TinyConv, TinyTokens, frozen

import modinv


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every test here runs with one intra-op thread (see ``one_thread``)."""
    yield


@pytest.fixture(scope="module")
def fake_detr():
    return frozen(FakeDetr())


@pytest.fixture(scope="module")
def fake_vit():
    return frozen(FakeVit())


@pytest.fixture(scope="module")
def tinyconv():
    return frozen(TinyConv())


@pytest.fixture(scope="module")
def tinytokens():
    return frozen(TinyTokens())


@pytest.fixture
def real_model():
    """``real_model(name, **options)``: a real adapter with seeded random weights. A broken adapter
    fails the test (never a skip)."""

    def load(name: str, **options) -> modinv.StagedModel:
        return modinv.load_model(name, weights="random", seed=0, **options)

    return load
