"""The explorer's computations without a browser: the same perturbations, reconstructions and numbers
as the library's analyses, and one state per session."""

from __future__ import annotations

import pytest
import torch

import modinv
from modinv.analysis import token_noise as tn
from modinv.analysis.color_filters import apply_filter
from modinv.analysis.evaluate import evaluate_chain
from modinv.data import open_source
from modinv.errors import ModinvError
from modinv.explore import Explorer, Perturbation, Session, explore, read_upload, sample_photo, token_stages
from modinv.explore.compute import rect_mask
from modinv.explore.inputs import to_uint8
from modinv.explore.export import numbers, save_view
from modinv.inverse.registry import build_component


def _session(explorer, photo) -> Session:
    session = Session()
    session.set_photo(photo)
    return session


def test_reconstructions_and_numbers_equal_evaluate(explorer, mnet, mnet_chain, photo_file):
    photo = read_upload(photo_file, explorer.size)
    view = explore(explorer, _session(explorer, photo))
    trace = mnet.trace(photo.image[None])
    result = evaluate_chain(mnet, mnet_chain, open_source(f"folder:{photo_file}", size=explorer.size),
                            progress=False, metrics=("mse", "psnr", "ssim"))
    for stage, image in view.original["chain"].images.items():
        assert torch.equal(image, mnet_chain.reconstruct(trace, stage)[0])
        for metric, value in view.original["chain"].metrics[stage].items():
            assert value == pytest.approx(result["metrics"][metric]["stages"][stage]["mean"], rel=1e-6)
    assert numbers(explorer, view)["chains"]["chain"]["metrics"] == result["metrics"]
    assert view.output["task"] == "classification" and len(view.output["top"]) == 5


def test_colour_filter_in_a_rectangle_is_the_analysis_filter(explorer, mnet, mnet_chain):
    photo = sample_photo("coffee", explorer.size)
    p = Perturbation(filter="green", rect=(0.25, 0.5, 0.75, 1.0))
    view = explore(explorer, _session(explorer, photo), p)
    mask = torch.zeros(explorer.size, dtype=torch.bool)
    mask[32:, 16:48] = True
    assert torch.equal(rect_mask(p.rect, explorer.size), mask)
    expected = apply_filter(photo.image, "green", mask)
    assert torch.equal(view.perturbed_image, expected) and not torch.equal(expected, photo.image)
    trace = mnet.trace(expected[None])
    for stage, image in view.perturbed["chain"].images.items():
        assert torch.equal(image, mnet_chain.reconstruct(trace, stage)[0])
        pair = view.pairwise["chain"][stage]
        assert pair == pytest.approx(float((image - view.original["chain"].images[stage]).double().pow(2).mean()))
    whole = explore(explorer, _session(explorer, photo), Perturbation(filter="grayscale"))
    assert torch.equal(whole.perturbed_image, apply_filter(photo.image, "grayscale"))


@pytest.fixture(scope="module")
def vit_explorer():
    """ViT-B/16 with random weights at 32×32 (2×2 patches) and a slim chain."""
    vit = modinv.load_model("vit-b16", weights="random", seed=0, input_size=(32, 32))
    chain = modinv.InverseChain.build(vit, arch="paper", stages=["bb"], seed=0)
    chain.replace("enc", build_component({"kind": "vit.enc", "depth": 1, "mlp_ratio": 0.25}),
                  meta={"variant": "standard", "seed": 0})
    return Explorer(vit, {"vit": chain.eval()})


def test_token_noise_is_the_token_analysis_manipulation(vit_explorer):
    model, chain = vit_explorer.model, vit_explorer.chains["vit"]
    photo = sample_photo("astronaut", vit_explorer.size)
    trace = model.trace(photo.image[None])
    stages = token_stages(model, trace)
    assert stages == list(model.stages)
    first = stages[0]
    view = explore(vit_explorer, _session(vit_explorer, photo), Perturbation(token_stage=first, fraction=0.5, seed=3))
    generator = tn.image_generator(3, 0)
    indices = tn.choose_tokens(4, tn.n_replaced(4, 0.5), generator)[None]
    units = torch.rand(trace[first].shape[-1], generator=generator)[None]
    edited = model.run(trace.edit(first, tn.manipulate(model, trace, first, indices, units, "matched")),
                       first, model.stages[-1])
    for stage in chain.stages:
        assert torch.equal(view.perturbed["vit"].images[stage], chain.reconstruct(edited, stage)[0])
    assert torch.equal(view.region, tn.patch_mask(indices, trace.context["grid"], (32, 32))[0])
    assert view.pairwise["vit"]["input"] == 0.0 and view.pairwise["vit"][first] > 0


def test_token_noise_refused_where_there_are_no_tokens(explorer):
    session = _session(explorer, sample_photo("coffee", explorer.size))
    with pytest.raises(ModinvError, match="not a token stage"):
        explore(explorer, session, Perturbation(token_stage=explorer.model.stages[0]))


def test_sessions_are_isolated_and_cache_the_forward_pass(explorer, monkeypatch):
    a, b = _session(explorer, sample_photo("coffee", explorer.size)), _session(explorer, sample_photo("rocket", explorer.size))
    before = explore(explorer, a)
    calls = []
    real = explorer.model.trace
    monkeypatch.setattr(explorer.model, "trace", lambda *x, **k: calls.append(1) or real(*x, **k))
    other = explore(explorer, b)
    again = explore(explorer, a)  # a's forward pass is cached: no new trace
    assert len(calls) == 1 and a.cached == 1 and b.cached == 1
    assert again.name == "coffee" and other.name == "rocket"
    for stage, image in before.original["chain"].images.items():
        assert torch.equal(again.original["chain"].images[stage], image)
        assert not torch.equal(other.original["chain"].images[stage], image)
    explore(explorer, a, Perturbation(filter="red"))
    assert len(calls) == 2 and a.cached == 2 and b.cached == 1
    assert not hasattr(explorer, "photo") and not hasattr(explorer, "session")


def test_bad_perturbations_and_missing_photo(explorer):
    with pytest.raises(ModinvError, match="colour filter"):
        Perturbation(filter="purple")
    with pytest.raises(ModinvError, match="rectangle"):
        Perturbation(filter="red", rect=(0.5, 0.1, 0.4, 0.9))
    with pytest.raises(ModinvError, match="photo"):
        explore(explorer, Session())


def test_save_view_writes_png_and_strict_json(explorer, tmp_path):
    import json

    view = explore(explorer, _session(explorer, sample_photo("coffee", explorer.size)), Perturbation(filter="blue"))
    png, data = save_view(explorer, view, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(data.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert record["explore"]["perturbation"]["filter"] == "blue"
    assert set(record["chains"]["chain"]["metrics"]) == {"mse", "psnr", "ssim"}
    assert record["perturbed"]["chain"]["pairwise_mse"]["input"] > 0


def test_detector_output_is_boxes_with_labels():
    from modinv.explore.compute import model_output
    from modinv.explore.views import detections_image, output_markdown

    detr = modinv.load_model("detr-r50", weights="random", seed=0, input_size=(64, 96))
    image = sample_photo("coffee", (64, 96)).image
    output = model_output(detr, detr.trace(image[None]), threshold=0.0)  # random weights: keep every query
    assert output["task"] == "detection" and len(output["detections"]) == 100
    first = output["detections"][0]
    assert first["label"] == detr.meta.class_names[first["index"]] and len(first["box"]) == 4
    assert [d["score"] for d in output["detections"]] == sorted((d["score"] for d in output["detections"]), reverse=True)
    drawn = detections_image(image, output)
    assert drawn.shape == (64, 96, 3) and (drawn != to_uint8(image).numpy()).any()
    assert first["label"] in output_markdown(output)
    assert detections_image(image, {"task": "classification"}) is None
