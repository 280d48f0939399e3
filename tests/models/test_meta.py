"""The metadata every registered model declares (``model.meta``), checked against the model itself.

Each registered name is built once with random weights at a small input size; the declared task
must match what ``output()`` returns, the class names the width of the task head, the normalisation
the model's own, and the inverse family must name a module of paper components (``paper_specs``).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import modinv
from modinv.models.base import LAYOUTS, TASKS, ModelMeta, stage_layout
from modinv.models.registry import available_models

# Small inputs where the model takes them (the default for the others); ``options`` of load_model.
SMALL = {"vit-b16": (32, 32), "vit-b16-noselfattn": (32, 32), "deit-b16": (32, 32), "swin-b": (64, 64),
         "mobilenet-v2": (32, 32), "timm:resnet18": (32, 32)}
REGISTERED = [name for name in available_models() if not name.endswith("<name>")]
PAPER = {  # inverse family and the paper's per-stage Adam rates of the paper's model families
    "detr-r50": ("detr", {"bb": 1e-3, "enc": 1e-3, "dec": 1e-4, "pred": 1e-3}),
    "vit-b16": ("vit", {"bb": 1e-3, "enc": 1e-4}),
    "vit-b16-noselfattn": ("vit", {"bb": 1e-3, "enc": 1e-4}),
    "deit-b16": ("vit", {"bb": 1e-3, "enc": 1e-4}),
    "swin-b": ("swin", {"bb": 1e-4, "s1": 1e-4, "s2": 1e-4, "s3": 1e-4, "s4": 1e-4}),
}
LAYOUT = {"detr-r50": "tokens", "vit-b16": "tokens", "vit-b16-noselfattn": "tokens", "deit-b16": "tokens",
          "swin-b": "nhwc", "mobilenet-v2": "nchw", "timm:resnet18": "nchw"}  # of every stage


def _model(name: str, detr: modinv.StagedModel) -> modinv.StagedModel:
    if name == "detr-r50":
        return detr  # the root conftest's, built once per session
    size = SMALL.get(name)
    return modinv.load_model(name, weights="random", **({"input_size": size} if size else {}))


def _head_width(model: modinv.StagedModel) -> int:
    """Number of classes the task output scores: logits' last dimension."""
    with torch.no_grad():
        out = model.output(model.trace(torch.rand(1, 3, *model.input_size, generator=torch.Generator().manual_seed(0))))
    if model.meta.task == "detection":
        assert set(out) >= {"logits", "pred_boxes"} and out["pred_boxes"].shape[-1] == 4
        return out["logits"].shape[-1]
    assert isinstance(out, torch.Tensor) and out.ndim == 2
    return out.shape[-1]


@pytest.mark.parametrize("name", REGISTERED + ["timm:resnet18"])
def test_declared_metadata_fits_the_model(name, detr):
    model = _model(name, detr)
    meta = model.meta
    assert isinstance(meta, ModelMeta) and meta is not modinv.StagedModel.meta  # declared, not the default
    assert meta.task in TASKS
    assert meta.class_names is not None and len(meta.class_names) == _head_width(model)
    assert all(isinstance(n, str) and n for n in meta.class_names)
    assert not hasattr(model, "class_names") and not hasattr(model, "labels")  # declared in one place only
    for declared, buffer in ((meta.mean, model.mean), (meta.std, model.std)):
        assert declared is not None and len(declared) == 3
        torch.testing.assert_close(torch.tensor(declared), buffer.flatten().cpu())
    assert set(meta.learning_rates) <= set(model.stages) and all(r > 0 for r in meta.learning_rates.values())
    assert meta.num_prefix_tokens >= 0
    shapes = model.stage_shapes()  # every stage's layout declared, and fitting its shape
    assert dict(meta.stage_layouts) == {s: LAYOUT[name] for s in model.stages} and LAYOUT[name] in LAYOUTS
    assert all(stage_layout(meta.stage_layouts, s, shapes[s]) == LAYOUT[name] for s in model.stages)
    if name in PAPER:
        assert (meta.inverse_family, dict(meta.learning_rates)) == PAPER[name]
    if meta.inverse_family is not None:  # resolvable: the module of the family's paper components
        module = importlib.import_module(f"modinv.inverse.{meta.inverse_family}")
        assert callable(module.paper_specs)


def test_detr_class_names_are_coco_category_ids_then_no_object(detr):
    names = detr.meta.class_names
    assert len(names) == 92 and names[0] == "N/A" and names[1] == "person" and names[17] == "cat"
    assert names[-1] == "no object" and names[-2] == "toothbrush"
    assert detr.meta.mean == (0.485, 0.456, 0.406) and detr.meta.std == (0.229, 0.224, 0.225)


def test_stage_layouts_are_checked_and_inferred():
    with pytest.raises(modinv.errors.ModinvError, match="stage layouts"):
        ModelMeta(stage_layouts={"bb": "chw"})
    assert [stage_layout({}, "s", shape) for shape in ((197, 768), (64, 8, 8), (1000,))] == ["tokens", "nchw", "vector"]
    assert stage_layout({"s": "nhwc"}, "s", (7, 7, 1024)) == "nhwc"
    with pytest.raises(modinv.errors.ModinvError, match="declared 'nhwc'"):
        stage_layout({"s": "nhwc"}, "s", (49, 1024))
