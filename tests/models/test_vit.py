"""ViT-B/16 adapter: stages against timm's own forward, normalisation, weights, no-self-attention."""

from __future__ import annotations

import re

import pytest
import torch

from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.models.registry import load_model
from modinv.data.imagenet import imagenet_class_names
from modinv.models.vit import build, no_self_attention_mask, token_position_embedding

SMALL = (64, 64)  # 4×4 patches + class token = 17 tokens: fast on CPU


def _images(n: int, size, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=g)


@pytest.fixture(scope="module")
def vit224():
    return load_model("vit-b16", weights="random", seed=0)


@pytest.fixture(scope="module")
def vit_small():
    return build("random", seed=0, input_size=SMALL)


@pytest.fixture(scope="module")
def noattn_small():
    return load_model("vit-b16-noselfattn", weights="random", seed=0, input_size=SMALL)


# -- exactness at the real input size ---------------------------------------------------------------
def test_stages_reproduce_timm_logits(vit224):
    x = _images(1, (224, 224))
    with torch.no_grad():
        trace = vit224.trace(x)
        ours = vit224.output(trace)
        reference = vit224.vit(vit224.normalize(x))  # timm's own forward
        features = vit224.vit.forward_features(vit224.normalize(x))
    assert ours.shape == (1, 1000)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # enc is the block output *before* the final norm
    torch.testing.assert_close(vit224.vit.norm(trace["enc"]), features, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trace["enc"], features, atol=1e-3)
    # the test's own premise: the logits are not trivially equal for any input
    assert ours.std() > 1e-3


def test_stage_shapes_and_context(vit224):
    assert vit224.name == "vit-b16"
    assert vit224.stages == ("bb", "enc")
    assert vit224.input_size == (224, 224)
    assert not vit224.training
    assert not any(p.requires_grad for p in vit224.parameters())
    assert vit224.stage_shapes() == {"img": (3, 224, 224), "bb": (197, 768), "enc": (197, 768)}
    context = vit224.prepare(_images(1, (224, 224)))
    assert set(context) == {"grid", "num_prefix_tokens", "pos_embed"}
    assert context["grid"] == (14, 14) and context["num_prefix_tokens"] == 1
    assert context["pos_embed"].shape == (1, 197, 768) and not context["pos_embed"].requires_grad


def test_layers(vit_small):
    x = _images(1, SMALL, seed=1)
    with torch.no_grad():
        trace = vit_small.trace(x)
        layers = vit_small.layers(x)
    assert trace.context["grid"] == (4, 4) and trace.context["num_prefix_tokens"] == 1
    assert trace.context["pos_embed"].shape == (1, 17, 768)
    assert list(layers) == ["enc"]
    assert len(layers["enc"]) == 13
    assert all(t.shape == (1, 17, 768) for t in layers["enc"])
    torch.testing.assert_close(layers["enc"][0], trace["bb"], rtol=0, atol=0)
    torch.testing.assert_close(layers["enc"][-1], trace["enc"], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(layers["enc"][1], layers["enc"][2])


def test_normalisation_from_timm_config(vit224):
    cfg = vit224.vit.pretrained_cfg
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    assert vit224.mean.shape == (1, 3, 1, 1) and vit224.std.shape == (1, 3, 1, 1)
    torch.testing.assert_close(vit224.mean.flatten(), torch.tensor(cfg["mean"]))
    torch.testing.assert_close(vit224.std.flatten(), torch.tensor(cfg["std"]))
    x = _images(1, (224, 224))
    torch.testing.assert_close(vit224.normalize(x), x * 2 - 1)


def test_metadata(vit224, noattn_small):
    for model in (vit224, noattn_small):
        meta = model.meta
        assert meta.task == "classification" and meta.inverse_family == "vit"
        assert meta.class_names == imagenet_class_names() and meta.class_names[0] == "tench"
        assert meta.mean == (0.5, 0.5, 0.5) and meta.std == (0.5, 0.5, 0.5)  # timm's config, not ImageNet's
        assert dict(meta.learning_rates) == {"bb": 1e-3, "enc": 1e-4}
        assert meta.num_prefix_tokens == 1


def test_pos_embed_is_what_each_bb_token_received(vit_small):
    """bb − pos_embed is timm's token sequence before its position embedding: class token, then
    the patch embeddings row by row."""
    x = _images(2, SMALL, seed=2)
    vit = vit_small.vit
    with torch.no_grad():
        trace = vit_small.trace(x)
        patches = vit.patch_embed(vit_small.normalize(x))
    pos = trace.context["pos_embed"]
    assert pos.shape == (1, 17, 768) and pos.abs().sum() > 0
    unembedded = torch.cat([vit.cls_token.expand(2, -1, -1), patches], dim=1)
    torch.testing.assert_close(trace["bb"] - pos, unembedded, rtol=0, atol=1e-6)
    torch.testing.assert_close(pos, vit.pos_embed, rtol=0, atol=0)  # this model embeds its class token too


def test_pos_embed_of_a_model_that_embeds_patch_tokens_only():
    """DeiT III adds the position embedding before the class token is prepended: zeros for it."""
    import timm

    deit = timm.create_model("deit3_small_patch16_224", pretrained=False, img_size=SMALL).eval()
    assert deit.no_embed_class
    x = torch.randn(1, 3, *SMALL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        patches = deit.patch_embed(x)
        embedded = deit._pos_embed(patches)
    pos = token_position_embedding(deit)
    assert pos.shape == (1, 17, 384) and not pos[0, 0].any()
    torch.testing.assert_close(embedded - pos, torch.cat([deit.cls_token, patches], dim=1), rtol=0, atol=1e-6)


def test_parameter_counts_cover_the_model(vit224):
    counts = vit224.parameter_counts()
    rest = sum(p.numel() for m in (vit224.vit.norm, vit224.vit.head) for p in m.parameters())
    assert counts["bb"] == 768 * 3 * 16 * 16 + 768 + 768 + 197 * 768
    assert counts["bb"] + counts["enc"] + rest == sum(p.numel() for p in vit224.vit.parameters())


# -- run / edit ------------------------------------------------------------------------------------------
def test_run_reproduces_trace(vit_small):
    with torch.no_grad():
        trace = vit_small.trace(_images(2, SMALL))
        assert trace["bb"].shape == (2, 17, 768)
        for start, end in [("img", "bb"), ("img", "enc"), ("bb", "enc")]:
            again = vit_small.run(trace, start, end)
            torch.testing.assert_close(again[end], trace[end], rtol=0, atol=1e-6)
        edited = trace.edit("bb", trace["bb"] + 0.5 * torch.randn_like(trace["bb"]))
        changed = vit_small.run(edited, "bb", "enc")
    torch.testing.assert_close(changed["bb"], edited["bb"], rtol=0, atol=0)
    assert (changed["enc"] - trace["enc"]).abs().max() > 1e-2
    assert trace.context["grid"] == (4, 4)


def test_wrong_image_size_raises(vit_small):
    with pytest.raises(ModinvError):
        vit_small.trace(_images(1, (32, 32)))
    with pytest.raises(ModinvError):
        vit_small.layers(_images(1, (224, 224)))
    with pytest.raises(ModinvError):
        build("random", input_size=(60, 60))


# -- weights -------------------------------------------------------------------------------------------
def _same_weights(a, b) -> bool:
    sa, sb = a.vit.state_dict(), b.vit.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeds(vit_small):
    rng_before = torch.random.get_rng_state()
    again = build("random", seed=0, input_size=SMALL)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    assert _same_weights(again, vit_small)
    del again
    other = build("random", seed=1, input_size=SMALL)
    assert not _same_weights(other, vit_small)


def test_pretrained_offline_raises_without_touching_the_network(offline_hub, network_attempts):
    with pytest.raises(WeightsUnavailableError) as info:
        build("pretrained", input_size=SMALL)
    assert network_attempts == []
    message = str(info.value)
    assert "\n" not in message and ".safetensors" in message and "weights" in message


def test_state_file_round_trip(vit_small, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit_small.vit.state_dict().items()}, str(path))
    loaded = load_model("vit-b16", weights=str(path), seed=123, input_size=SMALL)
    assert loaded.weights == str(path)
    assert _same_weights(loaded, vit_small)
    x = _images(1, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.output(loaded.trace(x)), vit_small.output(vit_small.trace(x)), rtol=0, atol=0)


def test_bad_state_file_raises(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"not_a_vit.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModinvError, match="do not fit"):
        build(str(path), input_size=SMALL)
    with pytest.raises(ModinvError):
        build(str(tmp_path / "missing.safetensors"), input_size=SMALL)


# -- no self-attention -------------------------------------------------------------------------------
def test_mask_layout():
    mask = no_self_attention_mask(5, 1)
    assert mask[0].all()
    assert torch.equal(mask[1:, 1:], torch.eye(4, dtype=torch.bool))
    assert not mask[1:, 0].any()


def test_no_self_attention_model(noattn_small, vit_small):
    assert noattn_small.name == "vit-b16-noselfattn"
    assert noattn_small.stages == ("bb", "enc")
    assert _same_weights(noattn_small, vit_small)  # same weights loading as vit-b16


def _perturb_one_patch(x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    y = x.clone()
    y[:, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    return y


def _token_change(model, x, y):
    with torch.no_grad():
        a, b = model.trace(x)["enc"], model.trace(y)["enc"]
    return (a - b).abs().amax(dim=(0, 2))  # per token


def test_patch_tokens_do_not_see_each_other(noattn_small, vit_small):
    x = _images(1, SMALL, seed=3)
    y = _perturb_one_patch(x, 1, 2)
    token = 1 + 1 * 4 + 2  # class token first, then the 4×4 grid row by row
    others = [i for i in range(1, 17) if i != token]

    change = _token_change(noattn_small, x, y)
    assert change[token] > 1e-2
    assert change[0] > 1e-2  # the class token still attends to every patch
    assert change[others].max() <= 1e-6

    # Control: with self-attention (same weights) the perturbation spreads to every token.
    change_std = _token_change(vit_small, x, y)
    assert change_std[others].min() > 1e-2


def test_mask_also_holds_on_timm_unfused_attention_path(noattn_small):
    # timm switches between F.scaled_dot_product_attention and an explicit softmax (TIMM_FUSED_ATTN=0);
    # the boolean mask must mean the same on both.
    x = _images(1, SMALL, seed=6)
    y = _perturb_one_patch(x, 3, 0)
    token = 1 + 3 * 4 + 0
    with torch.no_grad():
        fused = noattn_small.trace(x)["enc"]
    attns = [block.attn for block in noattn_small.vit.blocks]
    before = [attn.fused_attn for attn in attns]
    try:
        for attn in attns:
            attn.fused_attn = False
        with torch.no_grad():
            unfused = noattn_small.trace(x)["enc"]
        change = _token_change(noattn_small, x, y)
    finally:
        for attn, flag in zip(attns, before):
            attn.fused_attn = flag
    torch.testing.assert_close(unfused, fused, rtol=1e-4, atol=1e-4)
    assert change[token] > 1e-2 and change[0] > 1e-2
    assert change[[i for i in range(1, 17) if i != token]].max() <= 1e-6


def test_no_self_attention_layers_agree(noattn_small):
    x = _images(1, SMALL, seed=4)
    with torch.no_grad():
        layers = noattn_small.layers(x)["enc"]
        trace = noattn_small.trace(x)
    torch.testing.assert_close(layers[-1], trace["enc"], rtol=1e-6, atol=1e-6)


def test_no_self_attention_is_trainable(noattn_small):
    model = noattn_small
    try:
        model.train().requires_grad_(True)
        logits = model.logits(_images(2, SMALL, seed=5))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([3, 7]))
        loss.backward()
        for p in (model.vit.patch_embed.proj.weight, model.vit.blocks[0].attn.qkv.weight, model.vit.cls_token):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.freeze()


@pytest.mark.parametrize("size,message", [((224.7, 224), "must be (height, width) in pixels"),
                                          ((0, 32), "must be positive"),
                                          ((32, 33), "whole 16-pixel patches")])
def test_input_sizes_are_whole_positive_patch_multiples(size, message):
    with pytest.raises(ModinvError, match=re.escape(message)):
        load_model("vit-b16", weights="random", input_size=size)
