"""InverseChain on the real adapters (seeded random weights, small inputs except the full-size
``detr`` of tests/conftest.py): the context the components rely on, the declared inverse family,
the paper's exact dec⁻¹. A broken adapter fails these tests; nothing is skipped."""

from __future__ import annotations

import torch
from inverse_fakes import images

from modinv.inverse import InverseChain
from modinv.inverse.blocks import sine_position_embedding


def declared(model, family: str):
    """``model``, after checking that its adapter declares inverse family ``family``."""
    assert model.meta.inverse_family == family, model.meta
    return model


def test_integration_detr_paper_chain_on_the_real_adapter(real_model):
    model = declared(real_model("detr-r50", input_size=(64, 96)), "detr")
    trace = model.trace(images(model, b=1))
    assert tuple(trace.context["grid"]) == (2, 3)
    # the components' own sine embedding is DETR's (used when a context lacks "pos")
    pos = trace.context["pos"]
    assert torch.allclose(pos[:1], sine_position_embedding((2, 3), 256), atol=1e-5)
    chain = InverseChain.build(model, variants={"bb": "local"}).eval()
    assert chain.arch == "paper"
    with torch.no_grad():
        for stage in model.stages:
            assert chain.reconstruct(trace, stage).shape == (1, 3, 64, 96)
            assert chain.invert(stage, trace[stage], trace.context).shape == trace[model.previous(stage)].shape


def test_paper_dec_inverse_of_full_size_detr_has_the_papers_parameter_count(detr):
    chain = InverseChain.build(declared(detr, "detr"), arch="paper", stages=["dec", "pred"])
    assert chain.components["dec"].config["kind"] == "detr.dec"
    assert chain.trainable_parameters()["dec"] == 9_498_112  # DESIGN.md: no final LayerNorm
    assert chain.trainable_parameters()["pred"] == 246_784


def test_integration_vit_paper_chain_on_the_real_adapter(real_model):
    model = declared(real_model("vit-b16", input_size=(64, 48)), "vit")
    trace = model.trace(images(model, b=1))
    chain = InverseChain.build(model, variants={"bb": "analytic"}).eval()
    with torch.no_grad():
        x_hat = chain.reconstruct(trace, "bb")
        assert torch.allclose(x_hat, trace["img"], atol=1e-2)
        assert chain.reconstruct(trace, "enc").shape == (1, 3, 64, 48)
    learned = InverseChain.build(model, stages=["bb"])
    assert learned.invert("bb", trace["bb"], trace.context).shape == (1, 3, 64, 48)


def test_integration_auto_chain_on_mobilenet(real_model):
    model = real_model("mobilenet-v2", input_size=(64, 64))
    chain = InverseChain.build(model, arch="auto").eval()
    trace = model.trace(images(model, b=1))
    with torch.no_grad():
        out = chain.reconstruct_all(trace)
    assert set(out) == set(model.stages)
    assert all(y.shape == (1, 3, 64, 64) for y in out.values())
    assert model.meta.inverse_family is None and InverseChain.build(model, stages=[model.stages[0]]).arch == "auto"
