"""Fixtures of the explorer tests: a random-weights MobileNet-V2 at 64×64 with an untrained chain,
and photo files written to disk."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import modinv
from modinv.explore import Explorer

SIZE = (64, 64)


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def mnet() -> modinv.StagedModel:
    return modinv.load_model("mobilenet-v2", weights="random", seed=0, input_size=SIZE)


@pytest.fixture(scope="session")
def mnet_chain(mnet) -> modinv.InverseChain:
    return modinv.InverseChain.build(mnet, seed=0).eval()


@pytest.fixture(scope="session")
def explorer(mnet, mnet_chain) -> Explorer:
    return Explorer(mnet, {"chain": mnet_chain})


@pytest.fixture(scope="session")
def photo_file(tmp_path_factory) -> Path:
    """A 96×80 colour photo crop (scikit-image's cat) as PNG."""
    import skimage.data

    path = tmp_path_factory.mktemp("photos") / "cat.png"
    Image.fromarray(np.ascontiguousarray(skimage.data.chelsea()[100:180, 120:216])).save(path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port free on the loopback interface now."""
    return _free_port
