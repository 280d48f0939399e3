"""DeiT-B/16 (timm ``deit3_base_patch16_224``): the ViT adapter with DeiT III's weights layout.

The exactness tests build the real architecture at 32×32 (2×2 patches + class token); the one CLI
test builds it at 224×224 and checks what ``modinv info`` prints.
"""

from __future__ import annotations

import pytest
import torch

import modinv.cli
from modinv.data.imagenet import imagenet_class_names
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.registry import load_model
from modinv.models.vit import build_deit

SMALL = (32, 32)
PATCHES = 4  # 2×2 at 32×32


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *SMALL, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def deit():
    """Random DeiT-B at 32×32 whose blocks and head matter: DeiT III starts its LayerScale factors
    at 1e-6 and would leave every block close to the identity, so they (and the head) are redrawn."""
    model = build_deit("random", seed=0, input_size=SMALL)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.vit.named_parameters():
            if name.endswith("gamma") or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_trace_and_logits_equal_timm_forward(deit):
    x = _images(2)
    with torch.no_grad():
        trace = deit.trace(x)
        ours = deit.output(trace)
        reference = deit.vit(deit.normalize(x))  # timm's own forward
        features = deit.vit.forward_features(deit.normalize(x))
        rerun = deit.run(trace, "bb", "enc")
    assert ours.shape == (2, 1000) and ours.std() > 1e-3  # not trivially equal
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deit.vit.norm(trace["enc"]), features, rtol=1e-5, atol=1e-5)  # enc: before the norm
    assert not torch.allclose(trace["enc"], features, atol=1e-3)
    torch.testing.assert_close(rerun["enc"], trace["enc"], rtol=0, atol=0)


def test_shapes_context_and_metadata(deit):
    assert deit.name == "deit-b16" and deit.stages == ("bb", "enc") and deit.input_size == SMALL
    assert deit.vit.no_embed_class and deit.vit.pretrained_cfg["architecture"] == "deit3_base_patch16_224"
    assert deit.stage_shapes() == {"img": (3, *SMALL), "bb": (1 + PATCHES, 768), "enc": (1 + PATCHES, 768)}
    meta = deit.meta
    assert meta.task == "classification" and meta.class_names == imagenet_class_names()
    assert meta.mean == IMAGENET_MEAN and meta.std == IMAGENET_STD  # DeiT III's config: ImageNet statistics
    torch.testing.assert_close(deit.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert meta.inverse_family == "vit" and dict(meta.learning_rates) == {"bb": 1e-3, "enc": 1e-4}
    assert meta.num_prefix_tokens == 1 and dict(meta.stage_layouts) == {"bb": "tokens", "enc": "tokens"}
    assert not deit.training and not any(p.requires_grad for p in deit.parameters())


def test_pos_embed_reaches_patch_tokens_only(deit):
    """bb − pos_embed is the class token then the patch embeddings: the class token got no position."""
    x = _images(2, seed=1)
    vit = deit.vit
    with torch.no_grad():
        trace = deit.trace(x)
        patches = vit.patch_embed(deit.normalize(x))
    pos = trace.context["pos_embed"]
    assert trace.context["grid"] == (2, 2) and trace.context["num_prefix_tokens"] == 1
    assert pos.shape == (1, 1 + PATCHES, 768) and not pos[0, 0].any() and pos[0, 1:].abs().sum() > 0
    torch.testing.assert_close(pos[:, 1:], vit.pos_embed, rtol=0, atol=0)
    unembedded = torch.cat([vit.cls_token.expand(2, -1, -1), patches], dim=1)
    torch.testing.assert_close(trace["bb"] - pos, unembedded, rtol=0, atol=1e-6)


def test_layers_are_each_blocks_output(deit):
    x = _images(1, seed=2)
    with torch.no_grad():
        trace = deit.trace(x)
        layers = deit.layers(x)
        by_hand = [trace["bb"]]
        for block in deit.vit.blocks:
            by_hand.append(block(by_hand[-1]))
    assert list(layers) == ["enc"] and len(layers["enc"]) == 13
    for ours, expected in zip(layers["enc"], by_hand):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(layers["enc"][-1], trace["enc"], rtol=1e-6, atol=1e-6)


def test_state_file_round_trip_through_the_registry(deit, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in deit.vit.state_dict().items()}, str(path))
    loaded = load_model("deit-b16", weights=str(path), seed=123, input_size=SMALL)
    assert loaded.name == "deit-b16" and loaded.weights == str(path)
    x = _images(1, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.output(loaded.trace(x)), deit.output(deit.trace(x)), rtol=0, atol=0)


def test_cli_info_prints_stages_and_parameter_counts(capsys):
    """The full-size model (224×224) and the paper's ViT components."""
    assert modinv.cli.main(["info", "--model", "deit-b16", "--weights", "random", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["bb"], ["enc"])}
    block = 7_087_872  # a ViT-B block: qkv, projection, MLP ×4, two LayerNorms
    bb = 768 * 3 * 16 * 16 + 768 + 768 + 196 * 768  # projection, class token, patch-only position embedding
    # forward: DeiT III's blocks add two LayerScale vectors; inverse: the paper's bb⁻¹ and 12 blocks
    assert rows["bb"] == ["197×768", f"{bb:,}", "857,267"] and bb == 741_888
    # the paper's enc⁻¹ blocks have no q/k/v bias (the authors' qkv_bias=False): 85,026,816
    assert rows["enc"] == ["197×768", f"{12 * (block + 2 * 768):,}", f"{12 * (block - 3 * 768):,}"]
    assert "inverse architecture: paper" in out
