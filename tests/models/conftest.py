"""Fixtures of the model adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every test here runs with one intra-op thread (see ``one_thread``)."""
    yield


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The Hugging Face hub offline with an empty cache, so that no local copy can answer.

    huggingface_hub reads these at import time: the constants are patched as well as the
    environment."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path
