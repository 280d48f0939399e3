"""Fixtures of the analysis tests: small models, slim inverse chains, a tiny COCO set, the CLI runner.

Models have seeded random weights at small input sizes (DETR 64×96: a 2×3 token grid; ViT 32×32:
2×2 patches). The inverse chains keep the paper's component kinds but are slimmed (fewer channels
and layers) so that every analysis runs end to end on two CPU cores in seconds; the analyses only
use the chains' public interface, so the sizes do not matter to what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

import modinv
import modinv.cli
import modinv.cli.analyze
import modinv.cli.common
from modinv.inverse.chain import InverseChain
from modinv.inverse.registry import build_component

DETR_SIZE = (64, 96)
VIT_SIZE = (32, 32)


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_thread):
    """Every analysis test runs with one intra-op thread (see ``one_thread``)."""
    yield


# No figure of the suite is wider than this (modinv.figures keeps them at MAX_WIDTH_PX).
MAX_FIGURE_WIDTH_PX = 2500


def figure_widths(root: Path, since: float = 0.0) -> dict[Path, int]:
    """``{png: width in pixels}`` of every PNG under ``root`` written after ``since`` (a time stamp)."""
    from PIL import Image

    widths = {}
    for png in root.rglob("*.png"):
        if png.stat().st_mtime >= since:
            with Image.open(png) as image:
                widths[png] = image.size[0]
    return widths


@pytest.fixture(scope="module", autouse=True)
def _figures_fit_the_page(tmp_path_factory):
    """After each module of analysis tests: every PNG its tests wrote (anywhere under pytest's
    temporary folder) is at most MAX_FIGURE_WIDTH_PX wide."""
    import time

    started = time.time() - 1.0
    yield
    too_wide = {str(p): w for p, w in figure_widths(tmp_path_factory.getbasetemp(), started).items()
                if w > MAX_FIGURE_WIDTH_PX}
    assert not too_wide, f"figures wider than {MAX_FIGURE_WIDTH_PX} px: {too_wide}"


@pytest.fixture
def png_widths() -> Callable[..., dict[Path, int]]:
    """:func:`figure_widths`, for tests that check the figures they wrote at once."""
    return figure_widths


@pytest.fixture(scope="session")
def detr() -> modinv.StagedModel:
    """DETR-R50, seeded random weights, at 64×96 (overrides the full-size ``detr`` of tests/conftest.py)."""
    return modinv.load_model("detr-r50", weights="random", seed=0, input_size=DETR_SIZE)


@pytest.fixture(scope="session")
def vit() -> modinv.StagedModel:
    """ViT-B/16, seeded random weights, at 32×32."""
    return modinv.load_model("vit-b16", weights="random", seed=0, input_size=VIT_SIZE)


def _slim_detr_chain(model) -> InverseChain:
    """DETR's four paper component kinds with fewer channels and one transformer layer each."""
    grid, size = list(model.grid), list(model.input_size)
    slim = {
        "bb": {"kind": "detr.bb", "d_model": 256, "grid": grid, "out_size": size, "channels": [16, 16, 16],
               "up_channels": [16, 16, 16, 16, 16]},
        "enc": {"kind": "detr.enc", "grid": grid, "depth": 1, "dim_ff": 64},
        "dec": {"kind": "detr.dec", "grid": grid, "depth": 1, "dim_ff": 64},
    }
    with torch.random.fork_rng():
        torch.manual_seed(0)
        chain = InverseChain.build(model, arch="paper", stages=["pred"], seed=0)  # pred⁻¹ is small as it is
        for stage, config in slim.items():
            chain.replace(stage, build_component(config), meta={"variant": "standard", "seed": 0})
    return chain.eval()


def _local_bb_chain(model) -> InverseChain:
    """Only DETR's local bb⁻¹ (≈1 M parameters): the analysis borrows enc⁻¹ from the standard chain."""
    return InverseChain.build(model, arch="paper", stages=["bb"], seed=0, variants={"bb": "local"}).eval()


def _slim_vit_chain(model) -> InverseChain:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        chain = InverseChain.build(model, arch="paper", stages=["bb"], seed=0)
        chain.replace("enc", build_component({"kind": "vit.enc", "depth": 1, "mlp_ratio": 0.25}),
                      meta={"variant": "standard", "seed": 0})
    return chain.eval()


@pytest.fixture(scope="session")
def slim_vit_chain() -> Callable[[modinv.StagedModel], InverseChain]:
    """``slim_vit_chain(model)``: the paper's bb⁻¹ and a one-block enc⁻¹ for a ViT-family model."""
    return _slim_vit_chain


@pytest.fixture(scope="session")
def chains(tmp_path_factory, detr, vit) -> dict[str, Path]:
    """Saved chain folders: ``detr`` (slim, every stage, FD pred⁻¹), ``detr_local`` (local bb⁻¹ only),
    ``vit`` (slim bb⁻¹ and enc⁻¹)."""
    root = tmp_path_factory.mktemp("chains")
    return {
        "detr": _slim_detr_chain(detr).save(root / "detr"),
        "detr_local": _local_bb_chain(detr).save(root / "detr_local"),
        "vit": _slim_vit_chain(vit).save(root / "vit"),
    }


@pytest.fixture(scope="session")
def coco(tmp_path_factory) -> Path:
    """A two-image COCO set (a person and a cat)."""
    from modinv.data.synthetic import make_tiny_coco

    return make_tiny_coco(tmp_path_factory.mktemp("coco"), n_images=2)


@pytest.fixture
def cli(monkeypatch, detr, vit) -> Callable[..., dict]:
    """``cli(name, *argv)``: ``modinv analyze name ...`` through the real parser and handler, with
    only that analysis registered and the fixtures' models reused instead of rebuilt. Returns the
    handler's payload."""
    monkeypatch.setitem(modinv.cli.COMMANDS, "analyze", "analyze")
    real = modinv.cli.common.load_model
    cached = {("detr-r50", DETR_SIZE): detr, ("vit-b16", VIT_SIZE): vit}

    def load_model(name, weights="pretrained", seed=0, device=None, input_size=None, **kw):
        key = (name, tuple(input_size) if input_size else None)
        if weights == "random" and seed == 0 and key in cached:
            return cached[key]
        return real(name, weights=weights, seed=seed, device=device, input_size=input_size, **kw)

    monkeypatch.setattr(modinv.cli.common, "load_model", load_model)
    analyses = dict(modinv.cli.analyze.ANALYSES)

    def run(name: str, *argv: str) -> dict:
        monkeypatch.setattr(modinv.cli.analyze, "ANALYSES", {name: analyses[name]})  # only this one is imported
        args = modinv.cli.build_parser().parse_args(["analyze", name, *argv])
        payload = args.handler(args)
        assert isinstance(payload, dict) and payload["analysis"] == name
        return payload

    return run


@pytest.fixture
def main(monkeypatch, cli) -> Callable[..., int]:
    """``main(name, *argv)``: ``modinv.cli.main(["analyze", name, ...])`` (exit code, errors printed),
    with the same set-up as ``cli``."""
    analyses = dict(modinv.cli.analyze.ANALYSES)

    def run(name: str, *argv: str) -> int:
        monkeypatch.setattr(modinv.cli.analyze, "ANALYSES", {name: analyses[name]})
        return modinv.cli.main(["analyze", name, *argv])

    return run


def _common_args(model: str, size, inverse, data, out) -> list[str]:
    return ["--model", model, "--weights", "random", "--device", "cpu", "--input-size", *map(str, size),
            "--inverse", *map(str, inverse), "--data", data, "--out", str(out), "--batch", "2", "--limit", "2",
            "--amp", "off"]


def _read_outputs(out: Path, name: str) -> dict:
    png = out / f"{name}.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def common_args() -> Callable[..., list[str]]:
    """``common_args(model, size, inverse, data, out)``: the options every ``modinv analyze`` run of
    these tests shares (2 images, batches of 2, CPU, float32)."""
    return _common_args


@pytest.fixture(scope="session")
def read_outputs() -> Callable[[Path, str], dict]:
    """``read_outputs(out, name)``: ``<out>/<name>.json`` after checking ``<out>/<name>.png`` is a real PNG."""
    return _read_outputs
