"""The token-noise (Sec. 4.5), detection-error (Sec. 4.6) and intermediate-layer (Sec. 4.7) analyses.

Models have seeded random weights at small input sizes (DETR 64×96: a 2×3 token grid; ViT 32×32:
2×2 patches). The inverse chains keep the paper's component kinds but are slimmed (fewer channels
and layers) so that every analysis runs end to end on two CPU cores in seconds; the analyses only
use the chains' public interface, so the sizes do not matter to what is tested.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

import modinv
import modinv.cli
import modinv.cli.analyze
import modinv.cli.common
from modinv.analysis import errors as err
from modinv.analysis import tokens as tok
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.inverse.registry import build_component

DETR_SIZE = (64, 96)
VIT_SIZE = (32, 32)


# -- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two spinning threads run these tiny
    forward passes many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detr():
    return modinv.load_model("detr-r50", weights="random", seed=0, input_size=DETR_SIZE)


@pytest.fixture(scope="module")
def vit():
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
        chain = InverseChain.build(model, stages=["pred"], seed=0)  # pred⁻¹ is small as it is
        for stage, config in slim.items():
            chain.replace(stage, build_component(config), meta={"variant": "standard", "seed": 0})
    return chain.eval()


def _local_bb_chain(model) -> InverseChain:
    """Only DETR's local bb⁻¹ (≈1 M parameters): the analysis borrows enc⁻¹ from the standard chain."""
    return InverseChain.build(model, stages=["bb"], seed=0, variants={"bb": "local"}).eval()


def _slim_vit_chain(model) -> InverseChain:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        chain = InverseChain.build(model, stages=["bb"], seed=0)
        chain.replace("enc", build_component({"kind": "vit.enc", "depth": 1, "mlp_ratio": 0.25}),
                      meta={"variant": "standard", "seed": 0})
    return chain.eval()


@pytest.fixture(scope="module")
def chains(tmp_path_factory, detr, vit):
    root = tmp_path_factory.mktemp("chains")
    return {
        "detr": _slim_detr_chain(detr).save(root / "detr"),
        "detr_local": _local_bb_chain(detr).save(root / "detr_local"),
        "vit": _slim_vit_chain(vit).save(root / "vit"),
    }


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from modinv.data.synthetic import make_tiny_coco

    return make_tiny_coco(tmp_path_factory.mktemp("coco"), n_images=2)


@pytest.fixture
def cli(monkeypatch, detr, vit):
    """``modinv analyze`` with our analyses, reusing the fixtures' models instead of rebuilding them."""
    monkeypatch.setitem(modinv.cli.COMMANDS, "analyze", "analyze")
    monkeypatch.setattr(modinv.cli.analyze, "ANALYSES", {n: n for n in ("tokens", "errors", "layers")})
    real = modinv.cli.common.load_model
    cached = {("detr-r50", DETR_SIZE): detr, ("vit-b16", VIT_SIZE): vit}

    def load_model(name, weights="pretrained", seed=0, device=None, input_size=None, **kw):
        key = (name, tuple(input_size) if input_size else None)
        if weights == "random" and seed == 0 and key in cached:
            return cached[key]
        return real(name, weights=weights, seed=seed, device=device, input_size=input_size, **kw)

    monkeypatch.setattr(modinv.cli.common, "load_model", load_model)

    def run(*argv: str) -> dict:
        # The real parser and handler of `modinv analyze`; handlers return the JSON payload.
        args = modinv.cli.build_parser().parse_args(["analyze", *argv])
        payload = args.handler(args)
        assert isinstance(payload, dict) and payload["analysis"] == argv[0]
        return payload

    return run


def _common(model: str, size, inverse, data, out) -> list[str]:
    return ["--model", model, "--weights", "random", "--device", "cpu", "--input-size", *map(str, size),
            "--inverse", *map(str, inverse), "--data", data, "--out", str(out), "--batch", "2", "--limit", "2",
            "--amp", "off"]


def _outputs(out, name: str) -> dict:
    png = out / f"{name}.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


# -- tokens: the manipulation ---------------------------------------------------------------------------

def test_number_of_replaced_tokens() -> None:
    assert tok.n_replaced(300) == 60 and tok.n_replaced(196) == 39  # DETR 15×20, ViT 14×14
    assert [tok.n_replaced(n) for n in (4, 5, 6, 13, 8)] == [1, 1, 1, 3, 2]  # 0.8, 1, 1.2, 2.6, 1.6
    assert tok.n_replaced(10, 0.25) == 3  # 2.5: halves round up
    with pytest.raises(ModinvError):
        tok.n_replaced(10, 0.0)


def test_replace_tokens_one_noise_vector_plus_position() -> None:
    b, prefix, n, d = 3, 1, 50, 8
    x = torch.randn(b, prefix + n, d)
    pos = torch.randn(1, n, d)
    k = tok.n_replaced(n)
    gens = [tok.image_generator(0, i) for i in range(b)]
    idx = torch.stack([tok.choose_tokens(n, k, g) for g in gens])
    noise = torch.stack([torch.rand(d, generator=g) for g in gens])
    y = tok.replace_tokens(x, idx, noise, pos, num_prefix_tokens=prefix)
    assert torch.equal(y[:, :prefix], x[:, :prefix])  # the class token is never touched
    for i in range(b):
        changed = (y[i, prefix:] != x[i, prefix:]).any(-1)
        assert int(changed.sum()) == k == 10
        assert torch.equal(changed.nonzero().flatten(), idx[i])
        content = y[i, prefix:][idx[i]] - pos[0, idx[i]]  # replaced − its own position embedding
        assert torch.allclose(content, noise[i].expand(k, d), atol=1e-6)
    # seeded: the same (seed, image index) gives the same tokens and noise, another index others
    again = tok.image_generator(0, 1)
    assert torch.equal(tok.choose_tokens(n, k, again), idx[1])
    assert torch.equal(torch.rand(d, generator=again), noise[1])
    assert not torch.equal(idx[0], idx[1]) or not torch.equal(noise[0], noise[1])
    assert not torch.equal(tok.choose_tokens(n, k, tok.image_generator(1, 1)), idx[1])


def test_noise_token_ranges() -> None:
    tokens = torch.randn(400, 16) * torch.linspace(0.1, 5, 16) + 3
    unit = torch.rand(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tok.noise_token(tokens, unit, "unit"), unit)
    v = tok.noise_token(tokens, unit, "matched")
    mu, sd = tokens.mean(0), tokens.std(0, unbiased=False)
    assert torch.all(v >= mu - math.sqrt(3) * sd - 1e-5) and torch.all(v <= mu + math.sqrt(3) * sd + 1e-5)
    assert torch.allclose(tok.noise_token(tokens, torch.full((16,), 0.5), "matched"), mu, atol=1e-5)


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
        k = tok.n_replaced(n)
        gens = [tok.image_generator(0, i) for i in range(2)]
        idx = torch.stack([tok.choose_tokens(n, k, g) for g in gens])
        units = torch.stack([torch.rand(x.shape[-1], generator=g) for g in gens])
        y = tok.manipulate(model, trace, stage, idx, units, "matched")
        pos, in_tokens, _ = tok.position_embedding(model, trace, stage)
        assert (pos is not None) == (which == "detr" or stage == "bb")  # nothing added at ViT's enc
        assert torch.equal(y[:, :prefix], x[:, :prefix])
        for i in range(2):
            changed = (y[i, prefix:] != x[i, prefix:]).any(-1)
            assert int(changed.sum()) == k and torch.equal(changed.nonzero().flatten(), idx[i])
            content = y[i, prefix:][idx[i]] - (0 if pos is None else pos.expand(2, -1, -1)[i, idx[i]])
            assert torch.allclose(content, content[:1].expand_as(content), atol=1e-5)


def test_patch_mask_on_the_grid() -> None:
    m = tok.patch_mask(torch.tensor([0, 4]), (2, 3), (64, 96))  # DETR: 32×32 px per token
    expected = torch.zeros(64, 96, dtype=torch.bool)
    expected[0:32, 0:32] = True  # token 0: row 0, column 0
    expected[32:64, 32:64] = True  # token 4: row 1, column 1
    assert torch.equal(m, expected)
    vm = tok.patch_mask(torch.tensor([[1], [2]]), (2, 2), (32, 32))  # ViT: 16×16, batched
    assert vm.shape == (2, 32, 32) and vm[0, :16, 16:].all() and int(vm[0].sum()) == 256
    assert vm[1, 16:, :16].all() and int(vm[1].sum()) == 256
    a = torch.zeros(2, 3, 32, 32)
    b = a.clone()
    b[:, :, :16, 16:] = 0.5
    inside, outside = tok.region_mse(a, b, vm)
    assert torch.allclose(inside, torch.tensor([0.25, 0.0])) and torch.allclose(outside, torch.tensor([0.0, 0.25 / 3]))


# -- errors: AUROC, matching, predictions ----------------------------------------------------------------

def test_auroc() -> None:
    assert err.auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert err.auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert err.auroc([1, 1, 1], [1, 1]) == 0.5
    pos, neg = [0.8, 0.4, 0.6], [0.5, 0.4, 0.1]  # pairs won: 3 + (1 + 0.5) + 3 = 7.5 of 9
    assert err.auroc(pos, neg) == pytest.approx(7.5 / 9)
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert err.auroc(pos, neg) == pytest.approx(u / 9)
    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 5, 40), rng.integers(1, 6, 30)  # many ties
    assert err.auroc(p, q) == pytest.approx(stats.mannwhitneyu(p, q).statistic / (40 * 30))
    assert err.auroc([], [1.0]) is None and err.auroc([1.0, math.nan], [0.0]) == 1.0
    lo, hi = err.auroc_ci(0.8, 20, 30)
    assert 0 <= lo < 0.8 < hi <= 1


def test_matching_hand_made() -> None:
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    gt_labels = torch.tensor([1, 1, 2])
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)
    labels = torch.tensor([1, 1, 3, 2])
    scores = torch.tensor([0.90, 0.95, 0.99, 0.80])
    m = err.match_objects(gt, gt_labels, boxes, labels, scores)
    # pred 1 (0.95) takes GT 0 first; pred 0 finds GT 0 taken and GT 1 at IoU 0; pred 2 has the wrong
    # class; pred 3 overlaps GT 2 at IoU 1/3 < 0.5
    assert m["found"].tolist() == [True, False, False]
    assert m["pred"].tolist() == [1, -1, -1] and m["iou"][0] == pytest.approx(0.9)
    boxes[3] = torch.tensor([0, 0, 10, 20])  # IoU exactly 0.5 matches (COCO: >=)
    m = err.match_objects(gt, gt_labels, boxes, labels, scores)
    assert m["found"].tolist() == [True, False, True] and m["pred"].tolist() == [1, -1, 3]
    empty = err.match_objects(gt, gt_labels, boxes[:0], labels[:0], scores[:0])
    assert not empty["found"].any()


def test_detections_and_box_discrepancy(detr) -> None:
    pred = {"scores": torch.tensor([0.2, 0.9, 0.75, 0.7]), "labels": torch.tensor([1, 2, 3, 4]),
            "boxes": torch.arange(16.0).view(4, 4)}
    kept = err.filter_detections(pred, 0.7)  # score > 0.7, by descending score
    assert kept["labels"].tolist() == [2, 3] and torch.equal(kept["boxes"], pred["boxes"][[1, 2]])
    with torch.no_grad():
        dets = err.detections(detr, torch.rand(1, 3, *DETR_SIZE), threshold=0.0)
    assert len(dets) == 1 and dets[0]["boxes"].shape == (100, 4) and (dets[0]["scores"].diff() <= 0).all()
    image, recon = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    recon[:, 0:4, 0:2] = 1.0
    inside, relative, whole = err.box_discrepancy(image, recon, torch.tensor([[0.0, 0.0, 2.0, 4.0], [4, 4, 8, 8]]))
    assert whole == pytest.approx(8 / 64)
    assert inside.tolist() == pytest.approx([1.0, 0.0]) and relative.tolist() == pytest.approx([8.0, 0.0])


# -- the subcommands -------------------------------------------------------------------------------------

def test_cli_tokens_detr_two_chains(cli, chains, tmp_path) -> None:
    out = tmp_path / "tokens"
    cli("tokens", *_common("detr-r50", DETR_SIZE, [chains["detr"], chains["detr_local"]], "samples", out))
    result = _outputs(out, "tokens")
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


def test_cli_tokens_vit(cli, chains, tmp_path) -> None:
    out = tmp_path / "tokens_vit"
    cli("tokens", *_common("vit-b16", VIT_SIZE, [chains["vit"]], "samples", out), "--noise", "unit")
    result = _outputs(out, "tokens")
    assert result["n_tokens"] == 4 and result["num_prefix_tokens"] == 1 and result["patch_size"] == [16, 16]
    assert result["position_embedding"]["bb"] and not result["position_embedding"]["enc"]
    assert result["noise"]["mode"] == "unit" and list(result["results"]) == ["standard"]


def test_cli_errors(cli, chains, coco, tmp_path) -> None:
    out = tmp_path / "errors"
    cli("errors", *_common("detr-r50", DETR_SIZE, [chains["detr"]], f"coco:{coco}", out), "--threshold", "0.5")
    result = _outputs(out, "errors")
    assert set(result["stages"]) == {"bb", "enc", "dec", "pred"}
    for r in result["stages"].values():
        assert {"auroc", "auroc_ci95", "auroc_raw", "n_missed", "n_found"} <= set(r)
        assert r["n_missed"] + r["n_found"] == result["n_objects"] == 2  # a person and a cat
    assert result["threshold"] == 0.5 and result["iou_threshold"] == 0.5 and "small_box" in result["baselines"]
    obj = result["objects"][0]
    assert {"image", "category", "box", "found", "discrepancy", "relative"} <= set(obj)
    assert obj["category"] == "person" and set(obj["relative"]) == {"bb", "enc", "dec", "pred"}


@pytest.mark.parametrize("which", ["detr", "vit"])
def test_cli_layers(which, cli, chains, tmp_path) -> None:
    out = tmp_path / f"layers_{which}"
    model, size = ("detr-r50", DETR_SIZE) if which == "detr" else ("vit-b16", VIT_SIZE)
    cli("layers", *_common(model, size, [chains[which]], "samples", out))
    result = _outputs(out, "layers")
    if which == "detr":
        assert result["layers"] == {"enc": 7, "dec": 7}
        keys = {"enc->bb": 0, "enc->enc": 6, "dec->dec": 6}
    else:
        assert result["layers"] == {"enc": 13}
        keys = {"enc->bb": 0, "enc->enc": 12}
    assert {r["key"]: r["native_layer"] for r in result["rows"]} == keys
    for key in keys:
        per_layer = result["mse"][key]
        assert len(per_layer) == result["layers"][key.split("->")[0]]
        assert all(s["n"] == 2 and s["mse"] > 0 for s in per_layer)


def test_errors_needs_boxes_and_tokens_need_token_stages(detr, chains) -> None:
    from modinv.data import open_source

    chain = InverseChain.load(chains["detr"], detr)
    with pytest.raises(ModinvError, match="COCO"):
        err.detection_error_analysis(detr, chain, open_source("samples", size=DETR_SIZE), progress=False)
    mnet = modinv.load_model("mobilenet-v2", weights="random", seed=0, input_size=(32, 32))
    with pytest.raises(ModinvError, match="'bb' and 'enc'"):
        tok.token_noise_analysis(mnet, [], open_source("samples", size=(32, 32)), progress=False)
