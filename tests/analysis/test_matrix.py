"""Every analysis × every model family: it writes its PNG + JSON with a number checked by hand, or it
refuses in one sentence naming the role the model does not declare (issue 22, item 5).

Models are seeded random, at small input sizes (the Swin is the swin-b adapter with a tiny width,
the hf: ViT a tiny random config saved to disk); each is built once per module with a small
untrained chain. The expected table below is the README's "Which analysis runs on which model".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import modinv
from modinv.analysis import token_noise as tn
from modinv.analysis.color import color_analysis, color_robustness
from modinv.analysis.color_figures import color_figure, robustness_figure
from modinv.analysis.color_filters import pairwise_mse, perturbations
from modinv.analysis.errors import box_discrepancy, detection_error_analysis, detection_error_figure
from modinv.analysis.layers import layer_analysis, layer_figure
from modinv.analysis.registry import ANALYSES, VARIANTS, support
from modinv.analysis.stages import stage_errors, stage_errors_figure
from modinv.analysis.structure import structure_analysis, structure_figure
from modinv.analysis.tokens import token_noise_analysis, token_noise_figure
from modinv.data import open_source
from modinv.data.sources import task_source_options
from modinv.data.synthetic import make_image_folder
from modinv.errors import ModinvError
from modinv.fileio import write_json
from modinv.metrics import per_image_mse

SMALL = (32, 32)
SWIN_TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}
FILTERS = ("red", "grayscale")  # two filters keep the color runs cheap
N = 2  # images per run

FAMILIES = ("detr-r50", "vit-b16", "deit-b16", "swin-b", "mobilenet-v2", "timm:resnet18",
            "timm:deit_tiny_patch16_224", "hf:vit", "from_module")
HEAVY = ("detr-r50", "deit-b16")  # full-width networks (41 M, 86 M parameters): the slow rows
CASES = [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in FAMILIES]
ROWS = tuple(ANALYSES) + tuple(VARIANTS)
# (analysis, family) -> the role whose absence refuses it; every pair not listed runs.
TOKENS, PRED = "two token stages on one patch grid", "a prediction stage with class and box outputs"
DETECTOR, LAYERS = "a detector's post-processing of raw outputs into detections", "stacks of same-shape intermediate layers"
TASK = "a task (detection or classification) with a task metric"
REFUSED: dict[tuple[str, str], str] = {
    **{("structure", f): PRED for f in FAMILIES if f != "detr-r50"},
    **{("errors", f): DETECTOR for f in FAMILIES if f != "detr-r50"},
    **{("tokens", f): TOKENS for f in ("mobilenet-v2", "timm:resnet18", "from_module")},
    **{("layers", f): LAYERS for f in ("mobilenet-v2", "timm:resnet18", "timm:deit_tiny_patch16_224", "hf:vit",
                                       "from_module")},
    **{("color --robustness", f): TASK for f in ("hf:vit", "from_module")},
}


# -- the models, each once per module -------------------------------------------------------------------

def _from_module() -> modinv.StagedModel:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    return modinv.models.from_module(net, {"c1": "1", "c2": "3"}, SMALL, name="tiny-cnn")


def _hf_vit(root: Path) -> modinv.StagedModel:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ViTModel(config).save_pretrained(root / "vit")
    return modinv.load_model(f"hf:{root / 'vit'}", weights="random", seed=0)


@pytest.fixture(scope="module")
def family(detr, vit, chains, slim_vit_chain, tmp_path_factory) -> Callable[[str], tuple[Any, Any]]:
    """``family(name)``: (model, inverse chain), built on first use and kept for the module."""
    built: dict[str, tuple[Any, Any]] = {}

    def build(name: str) -> tuple[Any, Any]:
        if name in built:
            return built[name]
        if name == "detr-r50":
            model, chain = detr, modinv.InverseChain.load(chains["detr"], detr)
        elif name == "vit-b16":
            model, chain = vit, modinv.InverseChain.load(chains["vit"], vit)
        elif name == "deit-b16":
            model = modinv.load_model("deit-b16", weights="random", seed=0, input_size=SMALL)
            chain = slim_vit_chain(model)
        else:
            if name == "swin-b":
                model = modinv.load_model("swin-b", weights="random", seed=0, input_size=(64, 64), **SWIN_TINY)
            elif name == "hf:vit":
                model = _hf_vit(tmp_path_factory.mktemp("hf"))
            elif name == "from_module":
                model = _from_module()
            else:
                model = modinv.load_model(name, weights="random", seed=0, input_size=SMALL)
            chain = modinv.InverseChain.build(model, arch="auto", seed=0).eval()
        built[name] = (model, chain)
        return built[name]

    return build


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), per_class=1, size=SMALL, image_format="png")


def _images(source) -> torch.Tensor:
    return torch.stack([source[i]["image"] for i in range(N)])


def _written(result, figure: Callable, out: Path, name: str, **options: Any) -> dict[str, Any]:
    """Write ``<name>.png`` and ``<name>.json`` as ``modinv analyze`` does; the JSON read back."""
    out.mkdir(parents=True, exist_ok=True)
    figure(result, out / f"{name}.png", **options)
    write_json(out / f"{name}.json", result.to_json())
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{name}.json").read_text())


def _hand_mse(model, chain, images, stage: str, edit: Callable | None = None) -> float:
    with torch.no_grad():
        trace = model.trace(images)
        if edit is not None:
            trace = edit(trace)
        return float(per_image_mse(chain.reconstruct(trace, stage), images).mean())


# -- one runner per analysis: run it, write its files, check one number by hand --------------------------

def run_stages(model, chain, data, out) -> None:
    source = data["samples"]
    written = _written(stage_errors(model, chain, source, batch_size=N, limit=N, metrics=["mse"], progress=False),
                       stage_errors_figure, out, "stages")
    entry = written["results"][model.name]
    stage = next(iter(entry["stages"]))
    assert entry["stages"][stage]["mse"] == pytest.approx(_hand_mse(model, chain, _images(source), stage), rel=1e-5)


def run_color(model, chain, data, out) -> None:
    source = data["coco"]
    result = color_analysis(model, chain, source, filters=FILTERS, batch_size=4, limit=N, n_examples=1, progress=False)
    unit = _written(result, color_figure, out, "color")["units"][0]
    item = source[0]
    mask = item["masks"][item["labels"] == unit["category_id"]].bool().any(0)
    versions = perturbations(item["image"], mask, FILTERS)
    stage = result.stages[-1]
    with torch.no_grad():
        recon = chain.reconstruct(model.trace(versions), stage)
    assert unit["input"] == pytest.approx(float(pairwise_mse(versions)), rel=1e-6)
    assert unit[stage] == pytest.approx(float(pairwise_mse(recon)), rel=1e-4, abs=1e-9)


def run_robustness(model, chain, data, out) -> None:
    detector = model.meta.task == "detection"
    source = data["coco_boxes"] if detector else data["imagenet"]
    result = color_robustness(model, source, filters=FILTERS, batch_size=N, limit=N)
    out.mkdir(parents=True, exist_ok=True)
    robustness_figure(types_namespace(result, model), out / "color_robustness.png", {})
    write_json(out / "color_robustness.json", result.to_json())
    if detector:  # every query of every image scores above 0
        assert result.details["none"]["n_detections"] == N * 100
        return
    batch = [source[i] for i in range(N)]
    with torch.no_grad():
        logits = model.output(model.trace(torch.stack([b["image"] for b in batch])))
    top1 = float((logits.argmax(-1) == torch.tensor([b["label"] for b in batch])).float().mean())
    assert result.scores["none"] == pytest.approx(top1)


def types_namespace(robustness, model):
    """What :func:`robustness_figure` reads of a color result: its label and its JSON's robustness."""
    import types

    return types.SimpleNamespace(label=model.name, to_json=lambda: {"robustness": robustness.to_json()})


def run_structure(model, chain, data, out) -> None:
    role = model.prediction_stage()  # the OH pred⁻¹ exists only for a model that declares one
    pred = role.stage if role is not None else None
    oh = chain if pred is None else \
        modinv.InverseChain.build(model, arch="paper", variants={pred: "oh"}, stages=[pred], seed=1).eval()
    source = data["samples"]
    written = _written(structure_analysis(model, [chain, oh], source, batch_size=N, limit=N, progress=False),
                       structure_figure, out, "structure")
    assert written["mse"]["pred_fd"]["mse"] == pytest.approx(_hand_mse(model, chain, _images(source), pred), rel=1e-5)


def run_tokens(model, chain, data, out) -> None:
    source = data["samples"]
    result = token_noise_analysis(model, chain, source, batch_size=N, limit=N, progress=False)
    written = _written(result, token_noise_figure, out, "tokens")
    first, _ = tn.token_pair(model)
    images = _images(source)
    with torch.no_grad():
        trace = model.trace(images)
        _, n = tn.spatial_tokens(model, trace, first)
        gens = [tn.image_generator(0, i) for i in range(N)]
        indices = torch.stack([tn.choose_tokens(n, tn.n_replaced(n), g) for g in gens])
        width = model.token_content(trace, first).shape[-1]
        units = torch.stack([torch.rand(width, generator=g) for g in gens])
        edited = trace.edit(first, tn.manipulate(model, trace, first, indices, units))
        inside, _ = tn.region_mse(chain.reconstruct(edited, first), chain.reconstruct(trace, first),
                                  tn.patch_mask(indices, model.token_stage(first).grid, images.shape[-2:]))
    label = next(iter(written["results"]))
    assert written["results"][label]["bb_man"]["inside"]["mse"] == pytest.approx(float(inside.mean()), rel=1e-4)


def run_errors(model, chain, data, out) -> None:
    source = data["coco"]
    result = detection_error_analysis(model, chain, source, batch_size=N, limit=N, progress=False)
    written = _written(result, detection_error_figure, out, "errors")
    items = [source[i] for i in range(N)]
    assert written["n_objects"] == sum(len(item["boxes"]) for item in items)
    first, stage = items[0], result.objects[0]
    with torch.no_grad():
        recon = chain.reconstruct(model.trace(first["image"][None]), next(iter(stage["discrepancy"])))[0]
    inside, _, _ = box_discrepancy(first["image"], recon, first["boxes"][:1])
    assert stage["discrepancy"][next(iter(stage["discrepancy"]))] == pytest.approx(float(inside[0]), rel=1e-4)


def run_layers(model, chain, data, out) -> None:
    source = data["samples"]
    written = _written(layer_analysis(model, chain, source, batch_size=N, limit=N, progress=False),
                       layer_figure, out, "layers")
    row = written["rows"][-1]
    assert row["native_layer"] is not None  # the stage's own tensor is one of its layers
    hand = _hand_mse(model, chain, _images(source), row["entry"])
    assert written["mse"][row["key"]][row["native_layer"]]["mse"] == pytest.approx(hand, rel=1e-4)


RUNNERS = {"stages": run_stages, "color": run_color, "color --robustness": run_robustness,
           "structure": run_structure, "tokens": run_tokens, "errors": run_errors, "layers": run_layers}


def _call(analysis: str, model, chain, data, out) -> None:
    RUNNERS[analysis](model, chain, data, out)


@pytest.fixture(scope="module")
def sources(coco, imagenet) -> Callable[[Any], dict[str, Any]]:
    def make(model) -> dict[str, Any]:
        size = tuple(model.input_size)
        spec = f"imagenet:{imagenet}"
        return {"samples": open_source("samples", size=size), "coco": open_source(f"coco:{coco}", size=size),
                "coco_boxes": open_source(f"coco:{coco}", size=size, masks=False),
                "imagenet": open_source(spec, size=size, **task_source_options(spec))}
    return make


def test_the_matrix_covers_every_analysis():
    assert set(RUNNERS) == set(ROWS)


@pytest.mark.parametrize("name", CASES)
def test_registry_says_what_runs(name, family):
    model, _ = family(name)
    expected = {a: REFUSED.get((a, name)) for a in ROWS}
    said = support(model)
    for analysis, role in expected.items():
        if role is None:
            assert said[analysis] is None, f"{analysis} on {name}: {said[analysis]}"
        else:
            assert said[analysis] == f"{analysis} needs {role}; {model.name} declares none"


@pytest.mark.parametrize("analysis", ROWS)
@pytest.mark.parametrize("name", CASES)
def test_analysis_on_family(analysis, name, family, sources, tmp_path):
    model, chain = family(name)
    data = sources(model)
    role = REFUSED.get((analysis, name))
    if role is None:
        _call(analysis, model, chain, data, tmp_path / "out")
        return
    with pytest.raises(ModinvError) as refused:
        _call(analysis, model, chain, data, tmp_path / "out")
    message = str(refused.value)
    assert message == f"{analysis} needs {role}; {model.name} declares none"
    assert len(re.findall(r"[.;]\s+[A-Z]", message)) == 0  # one sentence
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_cli_refuses_before_reading_data(main, tmp_path, capsys):
    """``modinv analyze layers`` on a model without layer stacks: exit 2 with the role's sentence
    as soon as the chain's manifest names the model, although the data do not exist (nothing read)."""
    from modinv.models.registry import load_model

    model = load_model("mobilenet-v2", weights="random", input_size=(32, 32))
    modinv.InverseChain.build(model, arch="auto", seed=0).save(tmp_path / "chain")
    rc = main("layers", "--inverse", str(tmp_path / "chain"), "--data", f"folder:{tmp_path / 'no-data'}",
              "--out", str(tmp_path / "out"))
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        f"modinv analyze: error: layers needs {LAYERS}; mobilenet-v2 declares none")
