"""The intermediate-layer analysis (Sec. 4.7) through its subcommand. Models and slim chains come
from tests/analysis/conftest.py (DETR 64×96, ViT 32×32)."""

from __future__ import annotations

import pytest

DETR_SIZE = (64, 96)
VIT_SIZE = (32, 32)


@pytest.mark.parametrize("which", ["detr", "vit"])
def test_cli_layers(which, cli, chains, common_args, read_outputs, tmp_path) -> None:
    out = tmp_path / f"layers_{which}"
    model, size = ("detr-r50", DETR_SIZE) if which == "detr" else ("vit-b16", VIT_SIZE)
    cli("layers", *common_args(model, size, [chains[which]], "samples", out))
    result = read_outputs(out, "layers")
    if which == "detr":
        assert result["layers"] == {"enc": 7, "dec": 7}
        keys = {"enc->bb": 0, "enc->enc": 6, "dec->dec": 6}
    else:
        assert result["layers"] == {"enc": 13}
        keys = {"enc->bb": 0, "enc->enc": 12}
    assert {r["key"]: r["native_layer"] for r in result["rows"]} == keys and result["precision"] == "float32"
    for key in keys:
        per_layer = result["mse"][key]
        assert len(per_layer) == result["layers"][key.split("->")[0]]
        assert all(s["n"] == 2 and s["mse"] > 0 for s in per_layer)


def test_one_layers_mse_equals_a_hand_computation(vit, chains) -> None:
    import torch

    import modinv
    from modinv.analysis.layers import layer_analysis
    from modinv.data import open_source
    from modinv.metrics import per_image_mse

    chain = modinv.InverseChain.load(chains["vit"], vit)
    source = open_source("samples", size=vit.input_size)
    result = layer_analysis(vit, chain, source, batch_size=2, limit=3, progress=False)  # batches of 2 and 1
    images = torch.stack([source[i]["image"] for i in range(3)])
    with torch.no_grad():
        layer = vit.layers(images)["enc"][5]  # the output of block 5, fed to enc⁻¹ then bb⁻¹
        context = vit.trace(images).context
        recon = chain.components["bb"](chain.components["enc"](layer, context), context)
        hand = per_image_mse(recon.float(), images).double()
    per_layer = result.mse["enc->enc"]
    assert per_layer[5]["n"] == 3 and result.precision == "float32"
    assert per_layer[5]["mse"] == pytest.approx(float(hand.mean()), rel=1e-6)
    others = [s["mse"] for k, s in enumerate(per_layer) if k != 5]
    assert min(abs(v - per_layer[5]["mse"]) for v in others) > 1e-6 * per_layer[5]["mse"]  # the layers differ
