"""Model families as data: each registered family's declaration (stages, shapes at the default
size, input size, task, normalisation, inverse family) is what its built model reports, and the
registry lists and loads by name from the declarations alone.

Models are built with random weights on the ``meta`` device (shapes only, no memory or compute);
DETR, whose ResNet backbone does not build there, is the root conftest's session model.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest
import torch

import modinv
from modinv.errors import ModinvError
from modinv.models import family as family_module
from modinv.models import registry
from modinv.models.family import Family, register_family
from modinv.models.recipes import DETR_PAPER, MODINV, VIT_PAPER
from modinv.models.timm_loader import pretrained_normalisation

FAMILIES = registry.families()
DECLARED = [name for name, f in FAMILIES.items() if not f.is_prefix]


def _built(name: str, detr: modinv.StagedModel) -> modinv.StagedModel:
    if name == "detr-r50":
        return detr
    with torch.device("meta"):
        return modinv.load_model(name, weights="random", device="meta")


@pytest.mark.parametrize("name", DECLARED)
def test_declaration_is_what_the_model_reports(name, detr):
    declared = FAMILIES[name]
    model = _built(name, detr)
    assert declared.stages == tuple(model.stages) and declared.input_size == tuple(model.input_size)
    assert declared.shapes() == model.stage_shapes()  # the image too: 3×H×W at the default size
    assert declared.task == model.meta.task and declared.inverse_family == model.meta.inverse_family
    assert dict(model.meta.recipes) == dict(declared.recipes) and model.meta.weights_note == declared.weights_note
    for mine, theirs in ((declared.mean, model.meta.mean), (declared.std, model.meta.std)):
        assert mine == pytest.approx(theirs)
    assert declared.summary and declared.weights  # something to list


@pytest.mark.parametrize("name", ["vit-b16", "deit-b16", "swin-b"])
def test_declared_normalisation_is_the_timm_configs(name):
    """The family declares what its timm weights expect (0.5/0.5 for the ViT, ImageNet's otherwise)."""
    with torch.device("meta"):
        model = modinv.load_model(name, weights="random", device="meta")
    net = next(m for m in model.modules() if getattr(m, "pretrained_cfg", None))
    mean, std = pretrained_normalisation(net, name)
    assert FAMILIES[name].mean == pytest.approx(mean) and FAMILIES[name].std == pytest.approx(std)


def test_recipes_live_in_the_family_and_are_listed_by_name():
    assert dict(FAMILIES["detr-r50"].recipes) == {"paper": DETR_PAPER}
    assert FAMILIES["vit-b16"].recipes["paper"] is VIT_PAPER and not FAMILIES["mobilenet-v2"].recipes
    assert FAMILIES["detr-r50"].describe()["recipes"] == ["modinv", "paper"]
    assert FAMILIES["mobilenet-v2"].describe()["recipes"] == ["modinv"]
    for bad, message in (({"modinv": MODINV}, "declares recipe 'modinv'"), ({"paper": VIT_PAPER.__class__("x")},
                         "declares recipe 'paper'"), (("paper",), "map a name to a Recipe, got tuple")):
        with pytest.raises(ModinvError, match=message):
            Family(name="tiny", builder="pkg.mod:build", recipes=bad)


def test_a_built_model_takes_the_declared_facts_from_its_family():
    family = Family(name="tiny", builder="pkg.mod:build", task="classification", mean=(0.5,) * 3, std=(0.5,) * 3,
                    inverse_family="vit", recipes={"paper": VIT_PAPER}, weights_note="nothing")
    meta = family.meta(class_names=("a", "b"), finetune_stage="s1")
    assert (meta.task, meta.mean, meta.inverse_family, meta.weights_note) == ("classification", (0.5,) * 3, "vit",
                                                                               "nothing")
    assert meta.recipes == {"paper": VIT_PAPER} and meta.class_names == ("a", "b") and meta.finetune_stage == "s1"
    with pytest.raises(ModinvError, match="model family 'tiny' declares mean, task already"):
        family.meta(task=None, mean=(0.0,) * 3)


def test_the_built_in_families_and_the_prefixes():
    assert set(DECLARED) == {"detr-r50", "vit-b16", "vit-b16-noselfattn", "deit-b16", "swin-b", "mobilenet-v2"}
    assert registry.available_models() == sorted(DECLARED) + ["hf:<name>", "timm:<name>"]
    assert registry.model_family("timm:resnet18") is FAMILIES["timm:"]
    assert registry.model_family("hf:google/vit-base-patch16-224") is FAMILIES["hf:"]
    assert FAMILIES["swin-b"].shapes()["s4"] == (7, 7, 1024) and FAMILIES["detr-r50"].shapes()["pred"] == (100, 96)


def test_list_models_filters_like_timm():
    assert modinv.list_models() == registry.available_models()
    assert modinv.list_models("vit*") == ["vit-b16", "vit-b16-noselfattn"]
    assert modinv.list_models(["deit*", "swin*"]) == ["deit-b16", "swin-b"]
    assert modinv.list_models(task="detection") == ["detr-r50"]
    assert modinv.list_models("timm*") == ["timm:<name>"] and modinv.list_models("nothing*") == []


def test_unknown_names_are_one_sentence():
    for name in ("resnet", "timm:", "hf:"):
        with pytest.raises(ModinvError, match=f"unknown model '{name}'; valid models: deit-b16, "):
            modinv.load_model(name)


def test_bad_declarations_are_refused_in_one_sentence(monkeypatch):
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    cases = [({"name": "My Net"}, "lower-case"), ({"builder": 3}, "must be a function or 'module:function'"),
             ({"task": "segmentation"}, "task of model family 'tiny' must be one of"),
             ({"stage_shapes": {"x": (1,)}}, "gives shapes of stages it does not list: ['x']"),
             ({"name": "tiny:", "stages": ("a",)}, "declares no stages")]
    for change, message in cases:
        with pytest.raises(ModinvError, match=message.replace("(", r"\(").replace("[", r"\[")):
            Family(**{"name": "tiny", "builder": "pkg.mod:build", **change})
    with pytest.raises(ModinvError, match="a model family named 'vit-b16' is registered already"):
        register_family(Family(name="vit-b16", builder="pkg.mod:build"))
    assert register_family(FAMILIES["vit-b16"]) is FAMILIES["vit-b16"]  # the same declaration again: fine
    with pytest.raises(ModinvError, match="takes a modinv.models.family.Family"):
        register_family({"name": "tiny"})


def test_a_family_registered_by_a_call_loads_by_name(monkeypatch):
    """A ``module:function`` builder is imported only when the model is built."""
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    register_family(Family(name="tiny-mobilenet", builder="modinv.models.mobilenet:build", stages=("s4",),
                           stage_shapes={"s4": (24, 4, 4)}, input_size=(16, 16)))
    assert "tiny-mobilenet" in modinv.list_models("tiny*")
    model = modinv.load_model("tiny-mobilenet", weights="random", input_size=(16, 16))
    assert model.stage_shapes()["s4"] == (24, 4, 4)


def test_entry_points_may_name_a_family_a_list_or_a_function(tmp_path, monkeypatch):
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    (tmp_path / "plug_forms.py").write_text(
        "from modinv.models import Family\n"
        "ONE = Family(name='p-one', builder='m:f')\n"
        "TWO = [Family(name='p-two', builder='m:f')]\n"
        "def three():\n    return Family(name='p-three', builder='m:f')\n"
        "BAD = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plug_forms", raising=False)
    points = [EntryPoint(name, f"plug_forms:{attr}", registry.ENTRY_POINT_GROUP)
              for name, attr in (("one", "ONE"), ("two", "TWO"), ("three", "three"), ("bad", "BAD"))]
    with pytest.warns(UserWarning, match=r"skipped the model plugin 'bad = plug_forms:BAD' \(ModinvError: the entry "
                                         r"point bad = plug_forms:BAD gives int, not a module"):
        registry.load_plugins(points)
    assert {"p-one", "p-two", "p-three"} <= set(family_module.registered())
    sys.modules.pop("plug_forms", None)
