"""hf: adapter on tiny local transformers models (no downloads): hidden states, edits, weights, auto chain."""

from __future__ import annotations

import pytest
import torch

from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.inverse.chain import InverseChain
from modinv.models.hf import default_indices
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.registry import load_model

LABELS = {0: "cat", 1: "dog", 2: "fish"}
TOKENS = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
              intermediate_size=64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """save_pretrained folders of tiny random models: a ViT classifier (with a preprocessor config),
    a Swin backbone, a DINOv2 backbone and a whole CLIP model (text tower included)."""
    from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, SwinConfig, SwinModel, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(**TOKENS, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}))
    vit.save_pretrained(root / "vit")
    ViTImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "vit")
    SwinModel(SwinConfig(image_size=32, patch_size=2, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                         window_size=2)).save_pretrained(root / "swin")
    Dinov2Model(Dinov2Config(**{**TOKENS, "num_hidden_layers": 2})).save_pretrained(root / "dinov2")
    text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32)
    CLIPModel(CLIPConfig(vision_config={**TOKENS, "num_hidden_layers": 2}, text_config=text)).save_pretrained(root / "clip")
    return root


@pytest.fixture(scope="module")
def vit(saved):
    return load_model(f"hf:{saved / 'vit'}", weights="pretrained")


@pytest.fixture(scope="module")
def swin(saved):
    return load_model(f"hf:{saved / 'swin'}", weights="pretrained")


def _images(model, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *model.input_size, generator=torch.Generator().manual_seed(seed))


def _reference(model, x):
    with torch.no_grad():
        return model.net(pixel_values=model.normalize(x), output_hidden_states=True)


# -- the trace is output_hidden_states -------------------------------------------------------------------
def test_vit_trace_and_logits_equal_hf_forward(vit):
    x = _images(vit)
    with torch.no_grad():
        trace = vit.trace(x)
        logits = vit.output(trace)
    ref = _reference(vit, x)
    assert vit.stages == ("emb", "h1", "h2", "h3", "h4") and len(ref.hidden_states) == 5
    for stage, i in zip(vit.stages, range(5)):
        torch.testing.assert_close(trace[stage], ref.hidden_states[i], rtol=0, atol=0)
    assert trace["h4"].shape == (2, 17, 32) and not torch.allclose(trace["h3"], trace["h4"])
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 3) and logits.std() > 1e-4


def test_swin_trace_is_the_reshaped_hidden_states(swin):
    x = _images(swin)
    with torch.no_grad():
        trace = swin.trace(x)
    ref = _reference(swin, x)
    assert swin.stage_shapes() == {"img": (3, 32, 32), "emb": (8, 16, 16), "h1": (16, 8, 8), "h2": (32, 4, 4),
                                   "h3": (64, 2, 2), "h4": (64, 2, 2)}
    for i, stage in enumerate(swin.stages):
        torch.testing.assert_close(trace[stage], ref.reshaped_hidden_states[i], rtol=0, atol=0)
        tokens = ref.hidden_states[i]  # B×N×C, the same numbers
        torch.testing.assert_close(trace[stage].flatten(2).transpose(1, 2), tokens, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(swin.output(trace), ref.pooler_output, rtol=1e-5, atol=1e-5)
    assert swin.meta.task is None and swin.meta.class_names is None and swin.trace(x).context == {}


@pytest.mark.parametrize("folder", ["dinov2", "clip"])
def test_other_backbones_and_vision_towers(saved, folder):
    model = load_model(f"hf:{saved / folder}", weights="pretrained")
    assert type(model.net).__name__ == {"dinov2": "Dinov2Model", "clip": "CLIPVisionModel"}[folder]
    x = _images(model, seed=3)
    with torch.no_grad():
        trace = model.trace(x)
    ref = _reference(model, x)
    assert model.stages == ("emb", "h1", "h2")
    for i, stage in enumerate(model.stages):
        torch.testing.assert_close(trace[stage], ref.hidden_states[i], rtol=0, atol=0)
    assert trace.context["grid"] == (4, 4) and trace.context["num_prefix_tokens"] == 1


def test_chosen_hidden_states(saved):
    assert default_indices(12) == [3, 6, 9, 12] and default_indices(4) == [1, 2, 3, 4] and default_indices(2) == [1, 2]
    model = load_model(f"hf:{saved / 'vit'}", weights="random", hidden_states=[2, -1])
    assert model.stages == ("emb", "h2", "h4")
    x = _images(model, seed=1)
    with torch.no_grad():
        trace = model.trace(x)
    ref = _reference(model, x)
    torch.testing.assert_close(trace["h2"], ref.hidden_states[2], rtol=0, atol=0)
    torch.testing.assert_close(trace["h4"], ref.hidden_states[4], rtol=0, atol=0)
    for bad in ([0], [5], [3, 2], [2, 2]):
        with pytest.raises(ModinvError, match="hidden_states"):
            load_model(f"hf:{saved / 'vit'}", weights="random", hidden_states=bad)


def test_run_continues_from_an_edited_stage(vit, swin):
    x = _images(vit, seed=2)
    with torch.no_grad():
        trace = vit.trace(x)
        edited = trace.edit("h2", trace["h2"] + torch.randn_like(trace["h2"]))
        changed = vit.run(edited, "h2", "h4")
        layers = vit.net.vit.layers  # what continuing the network from h2 means, by hand
        expected = layers[3](layers[2](edited["h2"]))
    torch.testing.assert_close(changed["h4"], expected, rtol=1e-5, atol=1e-5)
    assert (changed["h4"] - trace["h4"]).abs().max() > 1e-2 and torch.equal(changed["h1"], trace["h1"])
    with torch.no_grad():  # Swin: the edited map goes back to tokens at the stage's own resolution
        strace = swin.trace(_images(swin))
        sedit = strace.edit("h1", torch.zeros_like(strace["h1"]))
        again = swin.run(strace, "h1", "h4")
        schanged = swin.run(sedit, "h1", "h4")
    torch.testing.assert_close(again["h4"], strace["h4"], rtol=0, atol=1e-6)
    assert (schanged["h4"] - strace["h4"]).abs().max() > 1e-3
    with pytest.raises(ModinvError, match="keep its shape"):
        vit.run(trace.edit("h2", trace["h2"][:, :5]), "h2", "h4")


def test_another_input_size_resamples_position_embeddings(saved):
    model = load_model(f"hf:{saved / 'vit'}", weights="pretrained", input_size=(48, 48))
    x = _images(model, seed=6)
    with torch.no_grad():
        trace = model.trace(x)
        ref = model.net(pixel_values=model.normalize(x), output_hidden_states=True, interpolate_pos_encoding=True)
    assert model.input_size == (48, 48) and trace["emb"].shape == (2, 37, 32)
    assert trace.context["grid"] == (6, 6) and "pos_embed" not in trace.context  # 17 learned, 37 tokens
    for i, stage in enumerate(model.stages):
        torch.testing.assert_close(trace[stage], ref.hidden_states[i], rtol=0, atol=0)


# -- metadata ----------------------------------------------------------------------------------------------
def test_metadata_context_and_parameter_counts(vit, swin):
    meta = vit.meta
    assert meta.task == "classification" and meta.class_names == ("cat", "dog", "fish")
    assert meta.mean == pytest.approx((0.5, 0.4, 0.3)) and meta.std == pytest.approx((0.2, 0.25, 0.3))
    assert meta.num_prefix_tokens == 1 and meta.inverse_family is None
    assert swin.meta.mean == pytest.approx(IMAGENET_MEAN) and swin.meta.std == pytest.approx(IMAGENET_STD)
    context = vit.trace(_images(vit, 1)).context
    assert context["grid"] == (4, 4) and context["num_prefix_tokens"] == 1
    torch.testing.assert_close(context["pos_embed"], vit.net.vit.embeddings.position_embeddings[0])
    counts = vit.parameter_counts()
    head = sum(p.numel() for m in (vit.net.vit.layernorm, vit.net.classifier) for p in m.parameters())
    assert counts["h1"] == counts["h4"] > 0
    assert sum(counts.values()) + head == sum(p.numel() for p in vit.net.parameters())


# -- weights -----------------------------------------------------------------------------------------------
def _state(model):
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_random_weights_are_seeded_and_files_load(saved, vit, tmp_path):
    from safetensors.torch import save_file

    name = f"hf:{saved / 'vit'}"
    a, b = load_model(name, weights="random", seed=4), load_model(name, weights="random", seed=4)
    c = load_model(name, weights="random", seed=5)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.net.state_dict().items()}, str(path))
    loaded = load_model(name, weights=str(path), seed=9)
    x = _images(vit)
    with torch.no_grad():
        torch.testing.assert_close(loaded.output(loaded.trace(x)), vit.output(vit.trace(x)), rtol=0, atol=0)


def test_missing_sources_fail_in_one_sentence(offline_hub, tmp_path, network_attempts):
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("hf:modinv-tests/no-such-model", weights="pretrained")
    assert network_attempts == []
    assert "\n" not in str(info.value) and "save_pretrained" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModinvError, match="cannot load the config"):
        load_model(f"hf:{tmp_path / 'empty'}", weights="random")


# -- arch="auto" inverse components ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["vit", "swin"])
def test_auto_chain_trains(which, vit, swin, adam_losses):
    model = {"vit": vit, "swin": swin}[which]
    chain = InverseChain.build(model, arch="auto", seed=0)
    assert list(chain.components) == list(model.stages)
    with torch.no_grad():
        trace = model.trace(_images(model, n=4, seed=5))
    for stage in model.stages:
        component = chain.component(stage).train()
        x, target = trace[stage], trace[model.previous(stage)]
        losses = adam_losses(component, x, target, trace.context, lr=1e-3)
        assert losses[-1] < losses[0], (which, stage, losses)
