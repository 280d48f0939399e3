"""Swin adapter: stages and logits against timm's own forward, shapes of swin-b, layers, weights."""

from __future__ import annotations

import pytest
import torch

from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.registry import load_model
from modinv.models.swin import SwinStagedModel, build

SMALL = (64, 64)  # 16×16 patch grid -> 8×8 -> 4×4 -> 2×2
# Same timm code as swin-b, a few thousand times smaller: window 2 divides every stage's grid.
TINY = {"embed_dim": 16, "depths": (1, 1, 3, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}


def _images(n: int, size=SMALL, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    return build("random", seed=0, input_size=SMALL, **TINY)


@pytest.fixture(scope="module")
def swin_b_meta():
    """The real swin-b at 224×224 without memory or init time: parameters on the meta device."""
    import timm

    with torch.device("meta"):
        net = timm.create_model("swin_base_patch4_window7_224")
    return SwinStagedModel(net).to("meta")


# -- exactness ---------------------------------------------------------------------------------------
def test_trace_and_logits_equal_timm_forward(tiny):
    x = _images(2, seed=1)
    net, inputs = tiny.swin, tiny.normalize(x)
    with torch.no_grad():
        trace = tiny.trace(x)
        logits = tiny.output(trace)
        reference = net(inputs)  # timm's own forward
        features, stages = net.forward_intermediates(inputs)  # timm's NCHW copies of the layers' outputs
        embedded = net.patch_embed(inputs)
    assert logits.shape == (2, 1000) and logits.std() > 1e-3
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trace["bb"], embedded, rtol=0, atol=0)
    for name, ref in zip(("s1", "s2", "s3", "s4"), stages):
        torch.testing.assert_close(trace[name], ref.permute(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.norm(trace["s4"]), features, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(trace["s4"], features, atol=1e-3)  # s4 is before the final norm


def test_normalisation_and_metadata(tiny):
    cfg = tiny.swin.pretrained_cfg
    assert tuple(cfg["mean"]) == pytest.approx(IMAGENET_MEAN) and tuple(cfg["std"]) == pytest.approx(IMAGENET_STD)
    x = _images(1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(tiny.normalize(x), (x - mean) / std)
    meta = tiny.meta
    assert meta.task == "classification" and meta.inverse_family == "swin" and meta.num_prefix_tokens == 0
    assert meta.mean == pytest.approx(IMAGENET_MEAN) and meta.std == pytest.approx(IMAGENET_STD)
    assert len(meta.class_names) == 1000 and meta.class_names[0] != meta.class_names[1]
    assert dict(meta.learning_rates) == {s: 1e-4 for s in ("bb", "s1", "s2", "s3", "s4")}


def test_swin_b_stage_shapes_and_parameter_counts(swin_b_meta):
    model = swin_b_meta
    assert model.stages == ("bb", "s1", "s2", "s3", "s4") and model.input_size == (224, 224)
    assert model.stage_shapes() == {
        "img": (3, 224, 224), "bb": (56, 56, 128), "s1": (56, 56, 128), "s2": (28, 28, 256),
        "s3": (14, 14, 512), "s4": (7, 7, 1024),
    }
    counts = model.parameter_counts()
    assert counts["bb"] == 128 * 3 * 4 * 4 + 128 + 2 * 128  # conv 4×4 s4 + its LayerNorm
    head = sum(p.numel() for m in (model.swin.norm, model.swin.head) for p in m.parameters())
    assert sum(counts.values()) + head == sum(p.numel() for p in model.swin.parameters()) == 87_768_224


# -- run, layers ------------------------------------------------------------------------------------------
def test_run_reproduces_and_continues_from_edits(tiny):
    with torch.no_grad():
        trace = tiny.trace(_images(2, seed=2))
        for start, end in [("img", "s2"), ("bb", "s4"), ("s2", "s4")]:
            torch.testing.assert_close(tiny.run(trace, start, end)[end], trace[end], rtol=0, atol=1e-6)
        edited = trace.edit("s2", trace["s2"] + torch.randn_like(trace["s2"]))
        changed = tiny.run(edited, "s2", "s4")
    assert torch.equal(changed["s1"], trace["s1"])
    assert (changed["s4"] - trace["s4"]).abs().max() > 1e-2


def test_layers_are_each_blocks_output(tiny):
    x = _images(1, seed=3)
    with torch.no_grad():
        trace, layers = tiny.trace(x), tiny.layers(x)
    assert {k: len(v) for k, v in layers.items()} == {"s1": 2, "s2": 2, "s3": 4, "s4": 2}
    shapes = tiny.stage_shapes()
    for stage, tensors in layers.items():
        assert all(tuple(t.shape[1:]) == shapes[stage] for t in tensors)
        torch.testing.assert_close(tensors[-1], trace[stage], rtol=0, atol=0)
    torch.testing.assert_close(layers["s1"][0], trace["bb"], rtol=0, atol=0)
    assert not torch.allclose(layers["s3"][1], layers["s3"][2])


def test_bad_input_sizes():
    with pytest.raises(ModinvError, match="32-pixel"):
        build("random", input_size=(60, 64), **TINY)


# -- weights ---------------------------------------------------------------------------------------------
def _same_weights(a, b) -> bool:
    sa, sb = a.swin.state_dict(), b.swin.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeds_leave_the_callers_rng_alone(tiny):
    before = torch.random.get_rng_state()
    assert _same_weights(build("random", seed=0, input_size=SMALL, **TINY), tiny)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not _same_weights(build("random", seed=1, input_size=SMALL, **TINY), tiny)


def test_state_file_round_trip_through_the_registry(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "swin.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.swin.state_dict().items()}, str(path))
    loaded = load_model("swin-b", weights=str(path), seed=5, input_size=SMALL, **TINY)
    assert loaded.name == "swin-b" and loaded.weights == str(path) and not loaded.training
    assert _same_weights(loaded, tiny)
    # the adapter's own state dict (keys "swin.…", what fine-tuning would save) loads too
    adapter = tmp_path / "adapter.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(adapter))
    assert _same_weights(build(str(adapter), input_size=SMALL, **TINY), tiny)


def test_bad_state_files_raise(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"not_a_swin.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModinvError, match="do not fit"):
        build(str(path), input_size=SMALL, **TINY)
    with pytest.raises(ModinvError, match="does not exist"):
        build(str(tmp_path / "missing.safetensors"), input_size=SMALL, **TINY)


def test_pretrained_offline_fails_in_one_sentence(offline_hub, network_attempts):
    with pytest.raises(WeightsUnavailableError) as info:
        build("pretrained", input_size=SMALL, **TINY)
    assert network_attempts == []
    message = str(info.value)
    assert "\n" not in message and "swin_base_patch4_window7_224" in message and ".safetensors" in message
