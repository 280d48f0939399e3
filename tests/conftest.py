"""Fixtures shared across the test packages (each package's conftest.py adds its own)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import modinv
from modinv.data.synthetic import make_tiny_coco


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads run these small
    passes many times slower than one. Modules that want it use it with ``autouse``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def detr() -> modinv.StagedModel:
    """DETR-R50 with seeded random weights at its full 480×640 input (frozen, eval mode)."""
    return modinv.load_model("detr-r50", weights="random", seed=0)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    """A COCO-format set (instances json + images) made from the sample photos."""
    return make_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    """One file of each awkward kind; 5 usable, 2 not."""
    root = tmp_path_factory.mktemp("odd")
    Image.new("L", (20, 10), 100).save(root / "gray.png")
    Image.new("RGBA", (20, 10), (255, 0, 0, 128)).save(root / "rgba.png")
    Image.fromarray(np.full((10, 20), 32768, dtype=np.uint16)).save(root / "sixteen.png")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.new("RGB", (20, 10), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.gif")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    (root / "full.jpg").unlink()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    return root
