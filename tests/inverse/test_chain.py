"""InverseChain (modinv.inverse.chain): building from the model's declared family, seeding,
composition (Eq. 2), reconstruction, parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from inverse_fakes import images
from torch import nn

import modinv
import modinv.inverse
from modinv.errors import ModinvError
from modinv.inverse import InverseChain, build_component, register

# -- building chains ------------------------------------------------------------------------------------


def test_paper_chain_for_detr_reconstructs_every_stage(fake_detr):
    chain = InverseChain.build(fake_detr, arch="paper", seed=0).eval()
    assert chain.stages == ("bb", "enc", "dec", "pred")
    assert chain.components["bb"].config["kind"] == "detr.bb"
    trace = fake_detr.trace(images(fake_detr, b=1))
    with torch.no_grad():
        out = chain.reconstruct_all(trace)
    assert list(out) == ["bb", "enc", "dec", "pred"]
    for stage, y in out.items():
        assert y.shape == (1, 3, 64, 96) and y.dtype == torch.float32
        assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert chain.invert("dec", trace["dec"], trace.context).shape == trace["enc"].shape
    assert chain.invert("pred", trace["pred"], trace.context).shape == trace["dec"].shape


def test_paper_chain_records_what_it_was_built_for(fake_detr):
    chain = InverseChain.build(fake_detr, seed=3, variants={"bb": "local", "pred": "oh"})
    assert chain.layout["model"] == "fake-detr"
    assert chain.layout["stages"] == ["img", "bb", "enc", "dec", "pred"]
    assert chain.layout["shapes"]["bb"] == [6, 256] and chain.layout["shapes"]["img"] == [3, 64, 96]
    assert chain.arch == "paper"
    assert chain.seeds() == {"bb": 3, "enc": 3, "dec": 3, "pred": 3}
    assert chain.component_meta["bb"]["variant"] == "local"
    assert chain.component_meta["pred"]["variant"] == "oh"
    assert chain.components["bb"].config["kind"] == "detr.bb_local"
    assert chain.components["pred"].mode == "oh"


def test_paper_arch_comes_from_the_declared_family_not_the_name(fake_detr, tinyconv, monkeypatch):
    # the same model under another name still gets DETR's paper components: its metadata decides
    monkeypatch.setattr(fake_detr, "name", "my-detector")
    chain = InverseChain.build(fake_detr, stages=["enc", "pred"])
    assert chain.arch == "paper" and chain.components["enc"].config["kind"] == "detr.enc"
    # a model declaring no family: "default" is "auto", "paper" is one sentence
    assert tinyconv.meta.inverse_family is None
    assert InverseChain.build(tinyconv, stages=["s2"]).arch == "auto"
    with pytest.raises(ModinvError, match=r"^model 'tiny-conv' declares no inverse family \(model.meta.inverse_family"
                                          r"\), so it has no paper components; use arch='auto' for it$"):
        InverseChain.build(tinyconv, arch="paper")
    # a declared family that does not exist
    monkeypatch.setattr(fake_detr, "meta", dataclasses.replace(fake_detr.meta, inverse_family="nope"))
    with pytest.raises(ModinvError, match="unknown inverse family 'nope'"):
        InverseChain.build(fake_detr, arch="paper")
    with pytest.raises(ModinvError, match="unknown inverse family 'nope'"):
        InverseChain.build(fake_detr)  # "default" follows the declaration too


def test_build_is_seeded_per_component(fake_detr):
    torch.manual_seed(123)
    before = torch.rand(1)
    a = InverseChain.build(fake_detr, seed=0, stages=["enc", "pred"])
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left alone... and:
    b = InverseChain.build(fake_detr, seed=0, stages=["pred", "enc"])
    c = InverseChain.build(fake_detr, seed=1, stages=["enc", "pred"])
    full = InverseChain.build(fake_detr, seed=0, variants={"bb": "local"})
    assert a.stages == ("enc", "pred") == b.stages
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
        assert torch.equal(value, full.state_dict()[key])  # a subset builds the same components
    assert not torch.equal(a.components["enc"].encoder.layers[0].ffn.linear1.weight,
                           c.components["enc"].encoder.layers[0].ffn.linear1.weight)


def test_build_refuses_what_it_cannot_build(fake_detr, tinyconv):
    with pytest.raises(ModinvError, match="arch='auto'"):
        InverseChain.build(tinyconv, arch="paper")
    with pytest.raises(ModinvError, match="unknown arch"):
        InverseChain.build(fake_detr, arch="papr")
    with pytest.raises(ModinvError, match="local"):
        InverseChain.build(fake_detr, variants={"bb": "analytic"})
    with pytest.raises(ModinvError, match="variants name no stage"):
        InverseChain.build(fake_detr, variants={"bbb": "local"})
    with pytest.raises(ModinvError, match="unknown stage"):
        InverseChain.build(fake_detr, stages=["encoder"])


def test_vit_paper_chain_with_learned_and_analytic_bb_inverse(fake_vit):
    x = images(fake_vit, b=2)
    trace = fake_vit.trace(x)
    chain = InverseChain.build(fake_vit, variants={"bb": "analytic"}).eval()
    assert chain.trainable_parameters()["bb"] == 0
    with torch.no_grad():
        exact = chain.reconstruct(trace, "bb")
        assert exact.shape == x.shape
        assert torch.allclose(exact, x, atol=1e-3)  # the affine patch embedding inverted exactly
        assert chain.reconstruct(trace, "enc").shape == x.shape
    assert 1 <= chain.components["bb"].condition_number() < float("inf")
    learned = InverseChain.build(fake_vit)
    assert learned.components["bb"].config["kind"] == "vit.bb"
    assert learned.components["bb"](trace["bb"], trace.context).shape == x.shape
    with pytest.raises(ModinvError, match="local by construction"):
        InverseChain.build(fake_vit, variants={"bb": "local"})


# -- composition (Eq. 2) -----------------------------------------------------------------------------------

@register("test.affine")
def _affine(scale: float = 1.0, shift: float = 0.0, target: list | None = None) -> nn.Module:
    return _Affine(scale, shift, target)


class _Affine(nn.Module):
    """y = scale·x + shift, reshaped/cropped to ``target`` (per sample); logs each call."""

    calls: list[float] = []

    def __init__(self, scale, shift, target):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.shift, self.target = shift, target

    def forward(self, x, context):
        _Affine.calls.append(self.shift)
        y = self.scale * x + self.shift
        if self.target is not None:  # repeat/crop the values to the target shape
            need, flat = int(torch.tensor(self.target).prod()), y.flatten(1)
            y = flat.repeat(1, -(-need // flat.shape[1]))[:, :need].reshape(x.shape[0], *self.target)
        return y


def test_reconstruct_composes_components_from_the_stage_down(fake_detr):
    shapes = fake_detr.stage_shapes()
    components = {
        s: build_component({"kind": "test.affine", "scale": 2.0, "shift": float(i),
                            "target": list(shapes[fake_detr.previous(s)])})
        for i, s in enumerate(fake_detr.stages, start=1)
    }
    chain = InverseChain(components, {"model": fake_detr.name, "stages": list(fake_detr.all_stages),
                                      "shapes": {k: list(v) for k, v in shapes.items()}})
    trace = fake_detr.trace(images(fake_detr, b=1))
    _Affine.calls.clear()
    with torch.no_grad():
        y = chain.reconstruct(trace, "dec")
    assert _Affine.calls == [3.0, 2.0, 1.0]  # dec⁻¹, then enc⁻¹, then bb⁻¹
    c = components
    manual = c["bb"](c["enc"](c["dec"](trace["dec"], {}), {}), {})
    assert torch.equal(y, manual)


def test_reconstruct_with_real_components_equals_manual_application(fake_detr):
    chain = InverseChain.build(fake_detr, variants={"bb": "local"}).eval()
    trace = fake_detr.trace(images(fake_detr, b=1))
    with torch.no_grad():
        manual = trace["pred"]
        for s in ("pred", "dec", "enc", "bb"):
            manual = chain.invert(s, manual, trace.context)
        assert torch.equal(chain.reconstruct(trace, "pred"), manual)


def test_missing_component_on_the_path_is_a_clear_error(fake_detr):
    chain = InverseChain.build(fake_detr, stages=["enc", "dec"])
    trace = fake_detr.trace(images(fake_detr, b=1))
    with pytest.raises(ModinvError, match="no inverse component for 'bb'"):
        chain.reconstruct(trace, "dec")
    with pytest.raises(ModinvError, match="no inverse component for stage 'pred'"):
        chain.invert("pred", trace["pred"], trace.context)
    with pytest.raises(ModinvError, match="reconstructs none"):
        chain.reconstruct_all(trace)
    with pytest.raises(ModinvError, match="unknown stage"):
        chain.reconstruct(trace, "head")


def test_reconstruct_under_bf16_autocast(fake_detr):
    chain = InverseChain.build(fake_detr, variants={"bb": "local"}).eval()
    trace = fake_detr.trace(images(fake_detr, b=1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = chain.reconstruct(trace, "pred")
    assert y.dtype == torch.float32 and y.shape == (1, 3, 64, 96) and torch.isfinite(y).all()
    with torch.no_grad():
        reference = chain.reconstruct(trace, "pred")
    # bf16 keeps 8 bits of mantissa (~0.4% per rounding): through four components the pixels stay
    # within 0.01 of the float32 reconstruction (measured 0.002; a wrong cast would be off by ~0.5)
    assert (y - reference).abs().max() < 0.01 and not torch.equal(y, reference)


def test_components_train_under_bf16_autocast(fake_detr):
    chain = InverseChain.build(fake_detr, variants={"bb": "local"}).train()
    trace = fake_detr.trace(images(fake_detr, b=2))
    for stage in chain.stages:
        component = chain.components[stage]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = component(trace[stage], trace.context)
        loss = torch.nn.functional.mse_loss(prediction.float(), trace[fake_detr.previous(stage)])
        loss.backward()
        grads = [p.grad for p in component.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), stage


# -- parameter counts of a chain ---------------------------------------------------------------------------

def test_trainable_and_full_path_parameter_counts(fake_detr):
    chain = InverseChain.build(fake_detr, variants={"bb": "local"})
    p = chain.trainable_parameters()
    assert p["bb"] == 1_049_603 and p["enc"] == 7_890_432 and p["dec"] == 9_498_112 and p["pred"] == 246_784
    assert p["total"] == p["bb"] + p["enc"] + p["dec"] + p["pred"]
    full = chain.full_path_parameters()
    assert full["bb"] == p["bb"]
    assert full["enc"] == p["bb"] + p["enc"]
    assert full["pred"] == p["total"]
    assert full["total"] == 4 * p["bb"] + 3 * p["enc"] + 2 * p["dec"] + p["pred"]
    # one way to ask: the method (the former module-level copies are gone)
    assert not hasattr(modinv.inverse, "full_path_parameter_count")
    assert not hasattr(modinv.inverse, "full_path_parameter_estimate")
    chain.components["enc"].requires_grad_(False)
    assert chain.trainable_parameters()["enc"] == 0
    with pytest.raises(ModinvError, match="needs the component of the first stage"):
        InverseChain.build(fake_detr, stages=["pred"]).full_path_parameters()


def test_modinv_exports_the_chain():
    assert modinv.InverseChain is InverseChain


# -- reconstruct is inference ------------------------------------------------------------------------------

def test_reconstruct_is_inference_it_leaves_the_chain_alone_and_ignores_the_batch(fake_vit, tmp_path):
    # a freshly built chain is in training mode; its bb⁻¹ has BatchNorm layers (running statistics)
    chain = InverseChain.build(fake_vit, arch="paper", stages=["bb"], seed=0)
    assert chain.training and any(isinstance(m, nn.BatchNorm2d) for m in chain.modules())
    before = {k: v.clone() for k, v in chain.state_dict().items()}
    x = images(fake_vit, b=3)
    other = torch.cat([x[:1], 1 - x[1:]])  # the same first image among other company
    together = chain.reconstruct(fake_vit.trace(x), "bb")
    alone = chain.reconstruct(fake_vit.trace(x[:1]), "bb")
    elsewhere = chain.reconstruct(fake_vit.trace(other), "bb")
    after = chain.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "reconstruct changed the chain's buffers"
    assert chain.training and all(m.training for m in chain.modules())  # the caller's mode is kept
    assert not together.requires_grad  # inference: no graph unless asked for
    torch.testing.assert_close(alone[0], together[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(elsewhere[0], together[0], atol=1e-6, rtol=0)
    # the same chain saved and loaded (eval mode) reconstructs the same images
    loaded = InverseChain.load(chain.save(tmp_path / "fresh"), fake_vit)
    torch.testing.assert_close(loaded.reconstruct(fake_vit.trace(x), "bb"), together, atol=1e-6, rtol=0)
    # gradients on request (e.g. with respect to the input), still without touching the statistics
    trace = fake_vit.trace(x)
    trace = trace.edit("bb", trace["bb"].clone().requires_grad_(True))
    with_grad = chain.reconstruct(trace, "bb", grad=True)
    with_grad.sum().backward()
    assert trace["bb"].grad is not None and torch.isfinite(trace["bb"].grad).all()
    torch.testing.assert_close(with_grad.detach(), together, atol=1e-6, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in chain.state_dict().items())


# -- reconstructing images given in any form ---------------------------------------------------------


def test_reconstruct_images_from_paths_pil_images_and_tensors_of_any_size(tinyconv, tmp_path):
    from PIL import Image

    chain = InverseChain.build(tinyconv, arch="auto", seed=0, stages=["s2", "s4", "tok"]).eval()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    pil = Image.new("L", (17, 23), 128)
    odd = torch.rand(3, 50, 70)
    out = chain.reconstruct_images([tmp_path / "a.png", pil, odd])  # the model the chain was built with
    size = tuple(tinyconv.input_size)
    assert out.shape == (3, 3, *size) and out.dtype == torch.float32
    deepest = chain.stages[-1]
    resized = torch.nn.functional.interpolate(odd[None], size=size, mode="bilinear", antialias=True).clamp(0, 1)
    expected = chain.reconstruct(tinyconv.trace(resized), deepest)
    assert torch.allclose(out[2:], expected, atol=1e-5)  # resized as the model declares, deepest stage
    back = chain.reconstruct_images([pil, odd], stage=chain.stages[0], original_size=True)
    assert [tuple(r.shape) for r in back] == [(3, 23, 17), (3, 50, 70)]
    batch = chain.reconstruct_images(torch.rand(2, 3, 9, 9), stage=chain.stages[0])
    assert batch.shape == (2, 3, *size)


def test_reconstruct_images_after_load_and_without_a_model(tinyconv, tmp_path):
    chain = InverseChain.build(tinyconv, arch="auto", seed=0, stages=["s2", "s4"])
    loaded = InverseChain.load(chain.save(tmp_path / "c"), tinyconv)
    assert loaded.reconstruct_images(torch.rand(3, 8, 8)).shape[0] == 1
    bare = InverseChain.load(tmp_path / "c")
    with pytest.raises(ModinvError, match="knows no model"):
        bare.reconstruct_images(torch.rand(3, 8, 8))
    assert bare.reconstruct_images(torch.rand(3, 8, 8), model=tinyconv).shape[0] == 1
    with pytest.raises(ModinvError, match="does not exist"):
        bare.reconstruct_images(tmp_path / "missing.png", model=tinyconv)
    with pytest.raises(ModinvError, match="3×H×W"):
        bare.reconstruct_images(torch.rand(5, 8, 8), model=tinyconv)


# -- bad arguments to the API (issue 27) ------------------------------------------------------------------

def test_build_without_a_model_is_one_sentence():
    for model in (None, "mobilenet-v2"):
        with pytest.raises(ModinvError, match="InverseChain.build needs a StagedModel"):
            InverseChain.build(model)


@pytest.fixture(scope="module")
def random_mobilenet():
    return modinv.load_model("mobilenet-v2", weights="random", seed=0, input_size=(32, 32))


def test_load_with_a_device_that_does_not_exist(random_mobilenet, tmp_path):
    folder = InverseChain.build(random_mobilenet, arch="auto").save(tmp_path / "chain")
    for device in ("banana", "tpu"):
        with pytest.raises(ModinvError, match=f"unknown device '{device}'"):
            InverseChain.load(folder, random_mobilenet, map_location=device)


def test_a_chain_for_random_weights_of_another_seed_is_refused(random_mobilenet, tmp_path):
    """Was: a chain trained on random weights of seed 0 loaded onto seed-7 weights without a word."""
    folder = InverseChain.build(random_mobilenet, arch="auto").save(tmp_path / "chain")
    other = modinv.load_model("mobilenet-v2", weights="random", seed=7, input_size=(32, 32))
    with pytest.raises(ModinvError) as info:
        InverseChain.load(folder, other)
    assert str(info.value) == (f"the inverse chain in '{folder}' does not fit model 'mobilenet-v2': it was trained on "
                               "random mobilenet-v2 weights of seed 0, but the model has random weights of seed 7 "
                               "(another network); load the model with seed 0")
    InverseChain.load(folder, random_mobilenet)  # its own seed
    InverseChain.load(folder)  # no model: nothing to compare
