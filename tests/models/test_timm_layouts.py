"""``timm:<name>`` for the three layouts of timm's feature maps, with ``arch="auto"`` components.

Swin keeps its maps channels-last (B×H×W×C), ConvNeXt channels-first (B×C×H×W), DeiT returns
tokens with a class token first. Each is built with random weights at 64×64: its declared layouts,
the auto components chosen for them, two Adam steps on every component, a reconstruction of the
right shape, and a chain saved and loaded again; plus one ``modinv info`` per layout.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modinv.cli
from modinv.inverse import InverseChain
from modinv.models.registry import load_model

SIZE = (64, 64)
CASES = {  # name -> (layout of every stage, the stages' per-sample shapes)
    "timm:swin_tiny_patch4_window7_224": ("nhwc", [(16, 16, 96), (8, 8, 192), (4, 4, 384), (2, 2, 768)]),
    "timm:convnext_atto": ("nchw", [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]),
    "timm:deit_tiny_patch16_224": ("tokens", [(17, 192)] * 12),  # class token + 4×4 patches
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    return request.param, load_model(request.param, weights="random", seed=0, input_size=SIZE)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def test_layouts_are_declared(case):
    name, model = case
    layout, shapes = CASES[name]
    assert list(model.stage_shapes().values())[1:] == shapes
    assert dict(model.meta.stage_layouts) == {s: layout for s in model.stages}
    context = model.trace(_images(1)).context
    if layout == "tokens":
        assert context == {"grid": (4, 4), "num_prefix_tokens": 1} and model.meta.num_prefix_tokens == 1
    else:
        assert context == {} and model.meta.num_prefix_tokens == 0


def test_auto_chain_trains_and_reconstructs(case, tmp_path):
    name, model = case
    layout, _ = CASES[name]
    chain = InverseChain.build(model, arch="auto", seed=0)
    configs = {s: chain.components[s].config for s in chain.stages}
    assert set(configs) == set(model.stages)
    first = configs[model.stages[0]]
    assert first["kind"] == "auto.upsample" and first["channels_last_in"] == (layout == "nhwc")
    assert not first["channels_last_out"]  # the image is B×3×H×W
    if layout == "tokens":  # the class token is dropped on the way to the image, kept between token stages
        assert first["num_prefix_tokens"] == 1 and first["context_grid"]
        assert {c["kind"] for s, c in configs.items() if s != model.stages[0]} == {"auto.tokens"}
    else:
        assert all(c["channels_last_out"] == (layout == "nhwc") for s, c in configs.items() if s != model.stages[0])

    with torch.no_grad():
        trace = model.trace(_images(2))
    optimisers = {s: torch.optim.Adam(chain.components[s].parameters(), lr=1e-3) for s in chain.stages}
    for _ in range(2):
        for stage in chain.stages:
            out = chain.invert(stage, trace[stage], trace.context)
            assert out.shape == trace[model.previous(stage)].shape
            loss = F.mse_loss(out, trace[model.previous(stage)])
            assert torch.isfinite(loss)
            optimisers[stage].zero_grad()
            loss.backward()
            optimisers[stage].step()
    chain.eval()
    with torch.no_grad():
        images = chain.reconstruct(trace, model.stages[-1])
    assert images.shape == (2, 3, *SIZE) and 0 <= float(images.min()) and float(images.max()) <= 1

    chain.save(tmp_path / "chain")
    again = InverseChain.load(tmp_path / "chain", model)
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.reconstruct(trace, model.stages[-1]), images, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_cli_info(name, capsys):
    args = ["info", "--model", name, "--weights", "random", "--input-size", "64", "64", "--device", "cpu"]
    assert modinv.cli.main(args) == 0
    out = capsys.readouterr().out
    layout, shapes = CASES[name]
    rows = [line.split() for line in out.splitlines() if line[:1] == "f"]
    assert [r[1] for r in rows] == ["×".join(map(str, s)) for s in shapes]
    assert all(int(r[2].replace(",", "")) > 0 and int(r[3].replace(",", "")) > 0 for r in rows)
    assert "inverse architecture: auto" in out
