"""Fixtures shared by the training tests (the root conftest.py adds one_thread, detr, tiny_coco)."""

from __future__ import annotations

import pytest

import modinv
from modinv.data import open_source
from modinv.data.synthetic import make_image_folder

SMALL = (32, 32)  # ViT-B/16: 2×2 patches + class token; MobileNet-V2: stages down to 1×1


@pytest.fixture(scope="module")
def vit_small() -> modinv.StagedModel:
    """ViT-B/16 with seeded random weights at 32×32 (frozen; training inverse components leaves it unchanged)."""
    return modinv.load_model("vit-b16", weights="random", input_size=SMALL)


@pytest.fixture(scope="module")
def mobilenet() -> modinv.StagedModel:
    """MobileNet-V2 with seeded random weights at 32×32: stages s4..s32 down to 1×1, small and fast."""
    return modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)


@pytest.fixture(scope="module")
def samples_small():
    """The four sample photos at 32×32."""
    return open_source("samples", size=SMALL)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageNet-style folder (one subfolder per class, 2 images each) at 32×32."""
    return make_image_folder(tmp_path_factory.mktemp("inet"), per_class=2, size=SMALL)
