"""``modinv models`` lists the registered families without building a model, and a family defined
outside modinv (a package with a ``modinv.models`` entry point, installed here as a folder with a
dist-info on ``sys.path``) is trained, reconstructed and analysed by name through the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

import modinv
from modinv.cli import main
from modinv.inverse import registry as inverse_registry
from modinv.models import family as family_module
from modinv.models import registry
from modinv.models.base import StagedModel

PLUGIN = "tiny_modinv_plugin"
MODEL = ["--model", "tiny-plug", "--weights", "random", "--device", "cpu"]

PLUGIN_MODEL = '''
"""A model family from outside modinv: two conv stages of a 16×16 input."""
from collections import OrderedDict

from torch import nn

from modinv.models import Family, from_module, register_family
from modinv.models.weights import seeded


def build(weights="random", seed=0, input_size=(16, 16), **_):
    with seeded(seed):
        net = nn.Sequential(OrderedDict(a=nn.Conv2d(3, 8, 3, stride=2, padding=1), a_act=nn.ReLU(),
                                        b=nn.Conv2d(8, 16, 3, stride=2, padding=1), b_act=nn.ReLU()))
    model = from_module(net, {"s1": "a_act", "s2": "b_act"}, input_size=input_size, name="tiny-plug")
    model.meta = FAMILY.meta(stage_layouts=model.meta.stage_layouts)  # the declared facts, from the family
    return model


FAMILY = register_family(Family(name="tiny-plug", builder=build, summary="a plugin's tiny CNN", stages=("s1", "s2"),
                       stage_shapes={"s1": (8, 8, 8), "s2": (16, 4, 4)}, input_size=(16, 16),
                       inverse_family="tinyplug", inverse_module="tiny_modinv_plugin.inverse"))
'''

PLUGIN_INVERSE = '''
"""The plugin's inverse components: one transposed convolution per stage."""
from torch import nn

from modinv.inverse.registry import register


class Up(nn.Module):
    def __init__(self, in_channels, out_channels, image):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.image = image

    def forward(self, x, context=None):
        y = self.up(x)
        return y.sigmoid() if self.image else y


@register("tinyplug.up")
def build_up(in_channels: int, out_channels: int, image: bool = False) -> nn.Module:
    return Up(in_channels, out_channels, image)


def paper_specs(shapes, context, variants, stages=None):
    names = list(shapes)
    return {stage: {"config": {"kind": "tinyplug.up", "in_channels": shapes[stage][0],
                               "out_channels": shapes[prev][0], "image": prev == "img"}, "variant": "standard"}
            for prev, stage in zip(names, names[1:]) if stages is None or stage in stages}
'''


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


@pytest.fixture
def fresh_registry(monkeypatch):
    """Registries as a new process finds them (entry points not yet read); restored afterwards.
    modinv's own families and inverse kinds are loaded first: a module first imported inside the
    test would register into the copies only, and stay imported after they are thrown away."""
    registry.families()
    inverse_registry.component_kinds()
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(inverse_registry, "_KINDS", dict(inverse_registry._KINDS))
    monkeypatch.setattr(inverse_registry, "_LEGACY", dict(inverse_registry._LEGACY))
    yield
    for name in [m for m in sys.modules if m == PLUGIN or m.startswith(PLUGIN + ".")]:
        del sys.modules[name]


@pytest.fixture
def plugin(tmp_path, monkeypatch, fresh_registry) -> Path:
    """The plugin package and its dist-info (with the entry point) in a folder on ``sys.path``."""
    site = tmp_path / "site"
    (site / PLUGIN).mkdir(parents=True)
    (site / PLUGIN / "__init__.py").write_text(textwrap.dedent(PLUGIN_MODEL))
    (site / PLUGIN / "inverse.py").write_text(textwrap.dedent(PLUGIN_INVERSE))
    info = site / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[modinv.models]\ntiny-plug = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_models_lists_every_family_without_building_one(monkeypatch, capsys):
    def no_build(self, *args, **kwargs):
        raise AssertionError("modinv models built a model")

    monkeypatch.setattr(StagedModel, "__init__", no_build)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in modinv.available_models():
        assert name in out
    assert "swin-b  (classification; input 224×224; inverse swin)" in out and "    s3      14×14×512" in out
    assert "detr-r50  (detection; input 480×640; inverse detr)" in out and "    pred    100×96" in out
    assert main(["models", "vit*", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in listed] == ["vit-b16", "vit-b16-noselfattn"]
    assert listed[0]["shapes"] == {"img": [3, 224, 224], "bb": [197, 768], "enc": [197, 768]}
    assert listed[0]["mean"] == [0.5, 0.5, 0.5] and listed[0]["inverse_family"] == "vit"
    assert listed[0]["recipes"] == ["modinv", "paper"] and listed[0]["offline_pretrained"] is False
    assert main(["models", "--task", "detection"]) == 0 and "vit" not in capsys.readouterr().out


def test_a_plugin_family_trains_reconstructs_and_analyzes_by_name(plugin, tmp_path, capsys):
    assert "tiny-plug" in modinv.list_models()
    assert main(["models", "tiny*"]) == 0
    assert "tiny-plug  (no task; input 16×16; inverse tinyplug)  a plugin's tiny CNN" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", *MODEL, "--data", "samples", "--steps", "2", "--batch", "2", "--out", str(run)]) == 0
    manifest = json.loads((run / "best" / "manifest.json").read_text())
    assert manifest["model"] == "tiny-plug"
    assert {c["kind"] for c in manifest["components"].values()} == {"tinyplug.up"}  # the plugin's components
    grid = tmp_path / "grid.png"
    assert main(["reconstruct", *MODEL, "--inverse", str(run / "best"), "--images", "chelsea",
                 "--out", str(grid)]) == 0 and grid.stat().st_size > 0
    out = tmp_path / "stages"
    assert main(["analyze", "stages", *MODEL, "--inverse", str(run / "best"), "--data", "samples", "--limit", "2",
                 "--out", str(out)]) == 0
    assert sorted(p.suffix for p in out.iterdir() if p.suffix in (".png", ".json")) == [".json", ".png"]


def test_a_broken_plugin_is_skipped_with_a_warning(plugin):
    (plugin / f"{PLUGIN}-0.1.dist-info" / "entry_points.txt").write_text("[modinv.models]\nbad = no_such_module_x\n")
    with pytest.warns(UserWarning, match="skipped the model plugin 'bad = no_such_module_x'"):
        names = modinv.list_models()
    assert "tiny-plug" not in names and "vit-b16" in names
