"""arch="auto" (modinv.inverse.auto): components chosen from the stage shapes of any staged model."""

from __future__ import annotations

import pytest
import torch
from inverse_fakes import images

from modinv.errors import ModinvError
from modinv.inverse import InverseChain
from modinv.inverse.auto import auto_specs
from modinv.inverse.registry import build_component


def test_auto_chain_on_a_conv_model(tinyconv):
    with pytest.raises(ModinvError, match="'vec'"):
        InverseChain.build(tinyconv, arch="auto")  # a vector cannot be turned back into tokens
    chain = InverseChain.build(tinyconv, arch="auto", stages=["s2", "s4", "tok"])
    kinds = {s: chain.components[s].config["kind"] for s in chain.stages}
    assert kinds == {"s2": "auto.upsample", "s4": "auto.upsample", "tok": "auto.upsample"}
    trace = tinyconv.trace(images(tinyconv))
    for stage in chain.stages:
        prev = tinyconv.previous(stage)
        assert chain.invert(stage, trace[stage], trace.context).shape == trace[prev].shape
    with torch.no_grad():
        y = chain.reconstruct(trace, "tok")
    assert y.shape == (2, 3, 30, 44) and 0 <= float(y.min()) and float(y.max()) <= 1


def test_auto_chain_on_a_token_model(tinytokens):
    chain = InverseChain.build(tinytokens, arch="auto")
    kinds = {s: chain.components[s].config["kind"] for s in chain.stages}
    assert kinds == {"bb": "auto.upsample", "enc": "auto.tokens", "map": "auto.tokens"}
    assert chain.components["bb"].config["num_prefix_tokens"] == 1
    trace = tinytokens.trace(images(tinytokens))
    for stage in chain.stages:
        assert chain.invert(stage, trace[stage], trace.context).shape == trace[tinytokens.previous(stage)].shape
    assert chain.reconstruct(trace, "map").shape == (2, 3, 32, 32)


def test_auto_chain_on_detr_shapes_handles_token_count_changes(fake_detr):
    chain = InverseChain.build(fake_detr, arch="auto", seed=0)
    trace = fake_detr.trace(images(fake_detr, b=1))
    assert chain.invert("dec", trace["dec"], trace.context).shape == (1, 6, 256)  # 100 -> 6 tokens
    assert chain.invert("pred", trace["pred"], trace.context).shape == (1, 100, 256)  # 96 -> 256 wide
    assert chain.reconstruct(trace, "pred").shape == (1, 3, 64, 96)
    assert InverseChain.build(fake_detr, arch="default", stages=["pred"]).arch == "paper"


def test_auto_specs_read_declared_layouts():
    """A channels-last map is read and written as one: the same component inside, permuted around."""
    shapes = {"img": (3, 64, 64), "m": (16, 16, 8), "t": (17, 12), "m2": (8, 8, 16)}
    context = {"grid": [4, 4], "num_prefix_tokens": 1, "stage_layouts": {"m": "nhwc", "t": "tokens", "m2": "nhwc"}}
    specs = auto_specs(shapes, context, {})
    components = {s: build_component(spec["config"]) for s, spec in specs.items()}
    configs = {s: c.config for s, c in components.items()}  # every argument, defaults included
    assert configs["m"]["kind"] == "auto.upsample" and configs["m"]["in_channels"] == 8
    assert (configs["m"]["channels_last_in"], configs["m"]["channels_last_out"]) == (True, False)
    assert configs["t"]["kind"] == "auto.upsample" and configs["t"]["num_prefix_tokens"] == 1  # class token dropped
    assert (configs["t"]["channels_last_in"], configs["t"]["channels_last_out"]) == (False, True)
    assert configs["m2"]["kind"] == "auto.tokens" and configs["m2"]["from_map"] and configs["m2"]["channels_last_in"]
    assert configs["m2"]["in_tokens"] == 64 and configs["m2"]["out_tokens"] == 17  # learned queries, class token too
    g = torch.Generator().manual_seed(0)
    for stage, prev in (("m", "img"), ("t", "m"), ("m2", "t")):
        out = components[stage](torch.randn(2, *shapes[stage], generator=g), context)
        assert out.shape == (2, *shapes[prev])
    # undeclared, the same 16×16×8 shape is a map of 16 channels at 16×8: a different component
    plain = auto_specs({"img": (3, 64, 64), "m": (16, 16, 8)}, {}, {})["m"]["config"]
    assert plain["in_channels"] == 16 and not plain.get("channels_last_in")
    with pytest.raises(ModinvError, match="declared 'nhwc'"):
        auto_specs({"img": (3, 64, 64), "t": (17, 12)}, {"stage_layouts": {"t": "nhwc"}}, {})


def test_auto_chain_on_a_channels_last_swin(real_model):
    """swin-b's own code at a tiny width (its stages are B×H×W×C): arch='auto' inverts every stage."""
    swin = real_model("swin-b", input_size=(64, 64), embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                      window_size=2)
    assert set(swin.meta.stage_layouts.values()) == {"nhwc"}
    chain = InverseChain.build(swin, arch="auto")
    trace = swin.trace(images(swin))
    for stage in chain.stages:
        assert chain.invert(stage, trace[stage], trace.context).shape == trace[swin.previous(stage)].shape
    assert chain.components["s2"].config["channels_last_in"] and chain.components["s2"].config["channels_last_out"]
    with torch.no_grad():
        assert chain.reconstruct(trace, "s4").shape == (2, 3, 64, 64)
