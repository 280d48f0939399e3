"""DETR-R50 adapter: stages compose to the Hugging Face forward pass; run, layers, weights, errors.

The random-weight model is the root conftest's ``detr`` (built once per session). The full 480×640
input is used once (the equivalence with DETR's own forward and the stage shapes); the other tests
use an adapter at 128×160 that shares the same DetrForObjectDetection.
"""

from __future__ import annotations

import pytest
import torch

import modinv
from modinv.errors import ModinvError, WeightsUnavailableError
from modinv.models.detr import NUM_CLASSES_WITH_NO_OBJECT, DetrStagedModel, build, logit_names, split_pred

SMALL = (128, 160)  # 4×5 token grid


def _images(batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small(detr: DetrStagedModel) -> DetrStagedModel:
    """An adapter at 128×160 sharing the root fixture's DetrForObjectDetection."""
    return DetrStagedModel(detr.detr, input_size=SMALL).freeze()


@pytest.fixture(scope="module")
def small_trace(small: DetrStagedModel) -> modinv.models.Trace:
    with torch.no_grad():
        return small.trace(_images(2, SMALL))


def _hf_forward(model: DetrStagedModel, images: torch.Tensor):
    mask = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.long)
    return model.detr(pixel_values=model.normalize(images), pixel_mask=mask)


def test_full_size_trace_reproduces_detr_forward_and_shapes(detr: DetrStagedModel) -> None:
    assert detr.name == "detr-r50" and detr.stages == ("bb", "enc", "dec", "pred")
    assert detr.input_size == (480, 640)
    images = _images(1, (480, 640))
    with torch.no_grad():
        trace = detr.trace(images)
        ref = _hf_forward(detr, images)
    shapes = {k: tuple(v.shape[1:]) for k, v in trace.stages.items()}
    assert shapes == {"img": (3, 480, 640), "bb": (300, 256), "enc": (300, 256), "dec": (100, 256), "pred": (100, 96)}
    logits, boxes = split_pred(trace["pred"])
    assert logits.shape[-1] == NUM_CLASSES_WITH_NO_OBJECT == 92 and boxes.shape[-1] == 4
    out = detr.output(trace)
    torch.testing.assert_close(out["logits"], ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trace["enc"], ref.encoder_last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trace["dec"], ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    ctx = trace.context
    assert ctx["grid"] == (15, 20) and all(type(g) is int for g in ctx["grid"])
    assert ctx["pos"].shape == (1, 300, 256)
    assert ctx["mask"].shape == (1, 15, 20) and ctx["mask"].dtype == torch.bool and bool(ctx["mask"].all())


def test_small_batch_reproduces_detr_forward(small: DetrStagedModel, small_trace) -> None:
    with torch.no_grad():
        ref = _hf_forward(small, small_trace["img"])
    out = small.output(small_trace)
    assert out["logits"].shape == (2, 100, 92) and out["pred_boxes"].shape == (2, 100, 4)
    torch.testing.assert_close(out["logits"], ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, atol=1e-5, rtol=1e-5)
    assert small_trace["bb"].shape == (2, 20, 256) and small_trace.context["grid"] == (4, 5)
    assert small_trace.context["image_size"] == SMALL


def test_run_from_any_stage_reproduces_trace(small: DetrStagedModel, small_trace) -> None:
    names = small.all_stages
    # run(start, end) computes every stage in between, so one run per start covers every end.
    for start in names[:-1]:
        with torch.no_grad():
            rerun = small.run(small_trace, start=start, end="pred")
        assert list(rerun.stages) == list(names)
        for end in names[names.index(start) + 1 :]:
            torch.testing.assert_close(rerun[end], small_trace[end], atol=1e-5, rtol=1e-5, msg=f"{start}->{end}")
    with torch.no_grad():
        partial = small.run(small_trace, start="img", end="enc")
    assert list(partial.stages) == ["img", "bb", "enc"]
    torch.testing.assert_close(partial["enc"], small_trace["enc"], atol=1e-5, rtol=1e-5)


def test_run_recomputes_after_an_edit(small: DetrStagedModel, small_trace) -> None:
    noisy = small_trace["enc"] + torch.randn(small_trace["enc"].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        edited = small.run(small_trace.edit("enc", noisy), start="enc", end="pred")
    assert torch.equal(edited["bb"], small_trace["bb"]) and torch.equal(edited["enc"], noisy)
    assert not torch.allclose(edited["dec"], small_trace["dec"], atol=1e-3)
    assert not torch.allclose(edited["pred"], small_trace["pred"], atol=1e-3)


def test_layers(small: DetrStagedModel, small_trace) -> None:
    with torch.no_grad():
        layers = small.layers(small_trace["img"])
    assert len(layers["enc"]) == 7 and len(layers["dec"]) == 7
    assert all(t.shape == (2, 20, 256) for t in layers["enc"])
    assert all(t.shape == (2, 100, 256) for t in layers["dec"])
    torch.testing.assert_close(layers["enc"][0], small_trace["bb"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layers["enc"][-1], small_trace["enc"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layers["dec"][-1], small_trace["dec"], atol=1e-6, rtol=1e-6)
    assert not layers["dec"][0].any()  # the zero target tokens
    assert not torch.allclose(layers["enc"][3], layers["enc"][-1])


def test_metadata_declares_a_detector(detr: DetrStagedModel, small: DetrStagedModel) -> None:
    for model in (detr, small):
        meta = model.meta
        assert meta.task == "detection" and meta.inverse_family == "detr" and meta.num_prefix_tokens == 0
        assert len(meta.class_names) == NUM_CLASSES_WITH_NO_OBJECT and meta.class_names[-1] == "no object"
        assert dict(meta.learning_rates) == {"bb": 1e-3, "enc": 1e-3, "dec": 1e-4, "pred": 1e-3}
    # the names are the wrapped model's config's, which the random build fills with COCO's
    assert detr.meta.class_names[:-1] == tuple(detr.detr.config.id2label[i] for i in range(91))


def test_logit_names_fill_the_gaps_of_a_config() -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(num_labels=3, id2label={"0": "a", "2": "c"})  # keys as read from JSON
    assert logit_names(config) == ("a", "N/A", "c", "no object")


def test_stage_modules_cover_every_parameter(detr: DetrStagedModel) -> None:
    counts = detr.parameter_counts()
    assert set(counts) == set(detr.stages) and all(n > 0 for n in counts.values())
    assert sum(counts.values()) == sum(p.numel() for p in detr.detr.parameters())


def test_seed_determines_random_weights(detr: DetrStagedModel) -> None:
    reference = detr.detr.state_dict()
    same = build("random", seed=0).detr.state_dict()
    other = build("random", seed=1).detr.state_dict()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    differs = [k for k in reference if not torch.equal(reference[k], other[k])]
    assert any(k.startswith("model.backbone.") for k in differs)
    assert any(k.startswith("model.encoder.") for k in differs)


def test_state_dict_file_round_trip(detr: DetrStagedModel, small_trace, tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "detr.safetensors"
    save_file({k: v.contiguous() for k, v in detr.detr.state_dict().items()}, str(path))
    loaded = modinv.load_model("detr-r50", weights=str(path), seed=3, input_size=SMALL)
    with torch.no_grad():
        pred = loaded.trace(small_trace["img"])["pred"]
    assert torch.equal(pred, small_trace["pred"])


def test_save_pretrained_directory_and_hub_layout_file(detr: DetrStagedModel, small_trace, tmp_path) -> None:
    from safetensors import safe_open

    detr.detr.save_pretrained(tmp_path / "detr")
    weights_file = tmp_path / "detr" / "model.safetensors"
    with safe_open(str(weights_file), "pt") as f:  # save_pretrained writes the hub checkpoint's key layout
        assert any("conv_encoder" in k for k in f.keys())
    for path in (tmp_path / "detr", weights_file):
        loaded = build(str(path), input_size=SMALL)
        with torch.no_grad():
            pred = loaded.trace(small_trace["img"])["pred"]
        assert torch.equal(pred, small_trace["pred"]), path


def test_bad_weights_paths(tmp_path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ModinvError, match="does not exist"):
        build(str(tmp_path / "missing.safetensors"))
    save_file({"detr.foo": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModinvError, match="do not fit.*unexpected keys foo$"):  # a "detr." prefix is dropped
        build(str(tmp_path / "foreign.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModinvError):
        build(str(tmp_path / "empty"))


def test_pretrained_offline_fails_without_touching_the_network(monkeypatch, tmp_path, network_attempts) -> None:
    import huggingface_hub.constants as hub_constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as info:
        build("pretrained")
    assert network_attempts == []
    message = str(info.value)
    assert "save_pretrained" in message and ".safetensors" in message and "\n" not in message


def test_wrong_image_or_input_size(small: DetrStagedModel) -> None:
    with pytest.raises(ModinvError, match="128×160"):
        small.trace(torch.rand(1, 3, 480, 640))
    with pytest.raises(ModinvError, match="divisible by 32"):
        modinv.load_model("detr-r50", weights="random", input_size=(100, 100))
    with pytest.raises(ModinvError, match="unknown stage"):
        small.step("head", torch.zeros(1), {})
