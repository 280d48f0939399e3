"""The token-noise analysis (Sec. 4.5): which tokens, what noise, which position embedding; the subcommand.

Models and slim chains come from tests/analysis/conftest.py (DETR 64×96: a 2×3 token grid; ViT
32×32: 2×2 patches).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import modinv
from modinv.analysis import token_noise as tn
from modinv.errors import ModinvError

# the module (modinv.analysis.tokens as an attribute is the analysis function of the same name)
tok = importlib.import_module("modinv.analysis.tokens")

DETR_SIZE = (64, 96)
VIT_SIZE = (32, 32)


def test_number_of_replaced_tokens() -> None:
    assert tn.n_replaced(300) == 60 and tn.n_replaced(196) == 39  # DETR 15×20, ViT 14×14
    assert [tn.n_replaced(n) for n in (4, 5, 6, 13, 8)] == [1, 1, 1, 3, 2]  # 0.8, 1, 1.2, 2.6, 1.6
    assert tn.n_replaced(10, 0.25) == 3  # 2.5: halves round up
    with pytest.raises(ModinvError):
        tn.n_replaced(10, 0.0)


def test_replace_tokens_one_noise_vector_plus_position() -> None:
    b, prefix, n, d = 3, 1, 50, 8
    x = torch.randn(b, prefix + n, d)
    pos = torch.randn(1, n, d)
    k = tn.n_replaced(n)
    gens = [tn.image_generator(0, i) for i in range(b)]
    idx = torch.stack([tn.choose_tokens(n, k, g) for g in gens])
    noise = torch.stack([torch.rand(d, generator=g) for g in gens])
    y = tn.replace_tokens(x, idx, noise, pos, num_prefix_tokens=prefix)
    assert torch.equal(y[:, :prefix], x[:, :prefix])  # the class token is never touched
    for i in range(b):
        changed = (y[i, prefix:] != x[i, prefix:]).any(-1)
        assert int(changed.sum()) == k == 10
        assert torch.equal(changed.nonzero().flatten(), idx[i])
        content = y[i, prefix:][idx[i]] - pos[0, idx[i]]  # replaced − its own position embedding
        assert torch.allclose(content, noise[i].expand(k, d), atol=1e-6)
    # seeded: the same (seed, image index) gives the same tokens and noise, another index others
    again = tn.image_generator(0, 1)
    assert torch.equal(tn.choose_tokens(n, k, again), idx[1])
    assert torch.equal(torch.rand(d, generator=again), noise[1])
    assert not torch.equal(idx[0], idx[1]) or not torch.equal(noise[0], noise[1])
    assert not torch.equal(tn.choose_tokens(n, k, tn.image_generator(1, 1)), idx[1])


def test_noise_token_ranges() -> None:
    tokens = torch.randn(400, 16) * torch.linspace(0.1, 5, 16) + 3
    unit = torch.rand(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tn.noise_token(tokens, unit, "unit"), unit)
    v = tn.noise_token(tokens, unit, "matched")
    mu, sd = tokens.mean(0), tokens.std(0, unbiased=False)
    assert torch.all(v >= mu - math.sqrt(3) * sd - 1e-5) and torch.all(v <= mu + math.sqrt(3) * sd + 1e-5)
    assert torch.allclose(tn.noise_token(tokens, torch.full((16,), 0.5), "matched"), mu, atol=1e-5)


@pytest.mark.parametrize("which", ["detr", "vit"])
def test_manipulate_real_models(which, detr, vit) -> None:
    model = detr if which == "detr" else vit
    images = torch.rand(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trace = model.trace(images)
    prefix = 1 if which == "vit" else 0
    for stage in ("bb", "enc"):
        x = trace[stage]
        n = x.shape[1] - prefix
        k = tn.n_replaced(n)
        gens = [tn.image_generator(0, i) for i in range(2)]
        idx = torch.stack([tn.choose_tokens(n, k, g) for g in gens])
        units = torch.stack([torch.rand(x.shape[-1], generator=g) for g in gens])
        y = tn.manipulate(model, trace, stage, idx, units, "matched")
        pos, in_tokens, _ = tn.position_embedding(model, trace, stage)
        assert (pos is not None) == (which == "detr" or stage == "bb")  # nothing added at ViT's enc
        assert torch.equal(y[:, :prefix], x[:, :prefix])
        for i in range(2):
            changed = (y[i, prefix:] != x[i, prefix:]).any(-1)
            assert int(changed.sum()) == k and torch.equal(changed.nonzero().flatten(), idx[i])
            content = y[i, prefix:][idx[i]] - (0 if pos is None else pos.expand(2, -1, -1)[i, idx[i]])
            assert torch.allclose(content, content[:1].expand_as(content), atol=1e-5)


def test_patch_mask_on_the_grid() -> None:
    m = tn.patch_mask(torch.tensor([0, 4]), (2, 3), (64, 96))  # DETR: 32×32 px per token
    expected = torch.zeros(64, 96, dtype=torch.bool)
    expected[0:32, 0:32] = True  # token 0: row 0, column 0
    expected[32:64, 32:64] = True  # token 4: row 1, column 1
    assert torch.equal(m, expected)
    vm = tn.patch_mask(torch.tensor([[1], [2]]), (2, 2), (32, 32))  # ViT: 16×16, batched
    assert vm.shape == (2, 32, 32) and vm[0, :16, 16:].all() and int(vm[0].sum()) == 256
    assert vm[1, 16:, :16].all() and int(vm[1].sum()) == 256
    a = torch.zeros(2, 3, 32, 32)
    b = a.clone()
    b[:, :, :16, 16:] = 0.5
    inside, outside = tn.region_mse(a, b, vm)
    assert torch.allclose(inside, torch.tensor([0.25, 0.0])) and torch.allclose(outside, torch.tensor([0.0, 0.25 / 3]))


def test_enc_man_plus_goes_through_the_frozen_encoder(detr, chains) -> None:
    from modinv.data import open_source

    chain = modinv.InverseChain.load(chains["detr"], detr)
    source = open_source("samples", size=detr.input_size)
    result = tok.token_noise_analysis(detr, chain, source, batch_size=2, limit=2, figure_images=2, progress=False)
    # by hand: the same tokens and noise per image (seed 0, the image's index), x̃_bb through model.run
    images = torch.stack([source[i]["image"] for i in range(2)])
    with torch.no_grad():
        trace = detr.trace(images, end="enc")
        _, n = tn.spatial_tokens(detr, trace, "bb")
        gens = [tn.image_generator(0, i) for i in range(2)]
        indices = torch.stack([tn.choose_tokens(n, tn.n_replaced(n), g) for g in gens])
        units = torch.stack([torch.rand(trace["bb"].shape[-1], generator=g) for g in gens])
        bb_man = tn.manipulate(detr, trace, "bb", indices, units, "matched")
        plus = detr.run(trace.edit("bb", bb_man), "bb", "enc")
        hand = chain.reconstruct(plus, "enc")
        default = chain.reconstruct(trace, "enc")
        skipped = chain.reconstruct(trace.edit("enc", bb_man), "enc")  # x̃_bb fed to enc⁻¹ without the encoder
        bb_recon = chain.reconstruct(trace.edit("bb", bb_man), "bb")
    assert (plus["enc"] - bb_man).abs().max() > 0.1 * bb_man.abs().max()  # the encoder does change x̃_bb
    rows = result.figure_data["rows"]["standard"]
    for i in range(2):  # (the slim untrained chain's images vary little: compare closely)
        torch.testing.assert_close(rows[i]["enc_man+"], hand[i], atol=1e-7, rtol=0)
        torch.testing.assert_close(rows[i]["bb_man"], bb_recon[i], atol=1e-7, rtol=0)
        assert (rows[i]["enc_man+"] - skipped[i]).abs().max() > 1e-5
        assert (rows[i]["enc_man+"] - rows[i]["bb_man"]).abs().max() > 1e-5
    inside, outside = tn.region_mse(hand, default, tn.patch_mask(indices, trace.context["grid"], images.shape[-2:]))
    numbers = result.results["standard"]["enc_man+"]
    assert numbers["inside"]["mse"] == pytest.approx(float(inside.mean()), rel=1e-5)
    assert numbers["outside"]["mse"] == pytest.approx(float(outside.mean()), rel=1e-5)
    assert result.precision == "float32"


def test_cli_tokens_detr_two_chains(cli, chains, common_args, read_outputs, tmp_path) -> None:
    out = tmp_path / "tokens"
    cli("tokens", *common_args("detr-r50", DETR_SIZE, [chains["detr"], chains["detr_local"]], "samples", out))
    result = read_outputs(out, "tokens")
    assert result["n_tokens"] == 6 and result["n_replaced"] == 1 and result["patch_size"] == [32, 32]
    assert result["position_embedding"]["bb"] and result["position_embedding"]["enc"]
    assert set(result["results"]) == {"standard", "local"} and result["n_images"] == 2
    for conditions in result["results"].values():
        assert set(conditions) == {"bb_man", "enc_man", "enc_man+"}
        for r in conditions.values():
            assert {"inside", "outside", "locality", "ratio", "vs_input", "default_vs_input"} <= set(r)
            assert r["inside"]["n"] == 2 and len(r["inside"]["ci95"]) == 2
    # the local bb⁻¹ paints each patch from its own token: bb_man changes nothing outside the patches
    local = result["results"]["local"]["bb_man"]
    assert local["outside"]["mse"] == 0 and local["inside"]["mse"] > 0 and local["locality"]["mean"] == 1


def test_cli_tokens_detr_every_token_replaced(cli, chains, common_args, read_outputs, tmp_path, capsys) -> None:
    """--fraction 1: the whole image changes, so inside is computed and outside/locality are null with a
    note saying why (before: the terminal summary raised TypeError on the null outside MSE)."""
    out = tmp_path / "tokens_all"
    cli("tokens", *common_args("detr-r50", DETR_SIZE, [chains["detr"]], "samples", out), "--fraction", "1")
    result = read_outputs(out, "tokens")
    assert result["n_replaced"] == result["n_tokens"] == 6 and result["fraction"] == 1
    assert "every token is replaced" in result["note"]
    for r in result["results"]["standard"].values():
        assert r["inside"]["n"] == 2 and math.isfinite(r["inside"]["mse"])
        assert r["vs_input"]["inside"]["n"] == 2
        assert r["outside"]["mse"] is None and r["outside"]["n"] == 0
        assert r["locality"]["mean"] is None and r["ratio"] is None
    printed = capsys.readouterr().out
    assert "outside n/a" in printed and "note: every token is replaced" in printed


def test_cli_tokens_vit(cli, chains, common_args, read_outputs, tmp_path) -> None:
    out = tmp_path / "tokens_vit"
    cli("tokens", *common_args("vit-b16", VIT_SIZE, [chains["vit"]], "samples", out), "--noise", "unit",
        "--token-stages", "bb", "enc")
    result = read_outputs(out, "tokens")
    assert result["conditions"]["enc_man+"] == {"manipulated": "bb", "reconstructed_from": "enc"}
    assert result["window"] == {"bb": None, "enc": None}  # global attention
    assert result["n_tokens"] == 4 and result["num_prefix_tokens"] == 1 and result["patch_size"] == [16, 16]
    assert result["position_embedding"]["bb"] and not result["position_embedding"]["enc"]
    assert result["noise"]["mode"] == "unit" and list(result["results"]) == ["standard"]
    assert result["precision"] == "float32"


def test_tokens_need_token_stages() -> None:
    from modinv.data import open_source

    mnet = modinv.load_model("mobilenet-v2", weights="random", seed=0, input_size=(32, 32))
    with pytest.raises(ModinvError, match="tokens needs two token stages on one patch grid; mobilenet-v2 declares none"):
        tok.token_noise_analysis(mnet, [], open_source("samples", size=(32, 32)), progress=False)
