"""Fixtures shared across the test packages (each package's conftest.py adds its own)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import modinv
import modinv.cli.common
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


class ModelCache:
    """Stands in for the CLI's model loading (``modinv.cli.common.load_model``): a model is built
    once per set of arguments and reused afterwards; :meth:`add` hands in a model a test already
    built, for the arguments that would build it. Builds that fail are not kept (their errors come
    from the real ``load_model``)."""

    def __init__(self, load: Callable[..., modinv.StagedModel]) -> None:
        self._load = load
        self._models: dict[tuple, modinv.StagedModel] = {}

    @staticmethod
    def _key(name: str, weights: Any, seed: int, device: Any, options: dict[str, Any]) -> tuple:
        options = dict(options)
        size = options.pop("input_size", None)
        where = str(torch.device(device)) if device is not None else "cpu"
        return (name, str(weights), int(seed), where, tuple(size) if size is not None else None,
                repr(sorted(options.items())))

    def add(self, model: modinv.StagedModel, seed: int = 0, **options: Any) -> modinv.StagedModel:
        """Answer ``load_model(model.name, weights=model.weights, seed=seed, device=model.device,
        input_size=model.input_size, **options)`` with ``model``; returns it."""
        key = self._key(model.name, model.weights, seed, model.device,
                        {"input_size": tuple(model.input_size), **options})
        self._models[key] = model
        return model

    def __call__(self, name: str, weights: Any = "pretrained", seed: int = 0, device: Any = None,
                 **options: Any) -> modinv.StagedModel:
        key = self._key(name, weights, seed, device, options)
        if key not in self._models:
            self._models[key] = self._load(name, weights=weights, seed=seed, device=device, **options)
        return self._models[key]


@pytest.fixture(scope="module")
def model_cache():
    """The CLI reuses models instead of rebuilding them, for the rest of the test module:
    ``modinv.cli.common.load_model`` becomes a :class:`ModelCache` (yielded, so that a test can
    ``model_cache.add(model)`` a model it built itself). Rebuilding a frozen random ViT-B/16 or
    DETR-R50 for every command of a test module would take most of its time."""
    cache = ModelCache(modinv.cli.common.load_model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modinv.cli.common, "load_model", cache)
        yield cache


def _adam_losses(component: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, context: dict,
                 lr: float, steps: int = 4) -> list[float]:
    """Train ``component`` alone for ``steps`` Adam steps on MSE(component(x), target); its losses."""
    optimizer = torch.optim.Adam(component.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(component(x, context), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def adam_losses():
    """``adam_losses(component, x, target, context, lr, steps=4) -> losses``: a few plain Adam steps
    of one inverse component, for tests that only need to see its loss fall."""
    return _adam_losses


@pytest.fixture
def network_attempts(monkeypatch) -> list[str]:
    """Every attempt to reach the network during the test (name lookup or connection), each refused
    as an offline machine refuses it; tests assert the list stays empty (offline paths must not try,
    retry or wait)."""
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            target = args[1] if what == "connect" and len(args) > 1 else args[0] if args else kwargs
            attempts.append(f"{what} {target}")
            raise OSError(f"test: network access refused ({what})")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    return attempts
