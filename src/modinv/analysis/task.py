"""Task metrics of the forward models: a detector's COCO box AP and a classifier's top-1 accuracy.

    preds = predictions(model, images)                     # per image: scores, labels, boxes (xyxy px)
    preds = trace_detections(model, trace)                 # the same from a trace already computed
    detection_ap(model, coco_source)                       # {"AP", "AP50", "AP75", ..., "n_images"}
    classification_top1(model, imagenet_source)            # {"top1", "n", "correct"}

``transform`` (both metrics) is an optional function applied to each image batch (float B×3×H×W in
[0, 1]) before the model sees it, e.g. a recolouring filter of the colour analysis; it must return
a batch of the same shape. Images are read at the model's input size (the source's ``size``).

A detector's predictions follow the post-processing its adapter declares (``model.detections``;
DETR's: softmax over the 92 logits, the no-object column dropped, each query's score and label the
maximum over the 91 real classes, the class index being the COCO category id). For AP the boxes are scaled to each image's ORIGINAL size (``item["orig_size"]``, the annotation
file's height and width) and scored with pycocotools' ``COCOeval`` against ``source.coco``, on
the evaluated images only.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable

import torch
from torch import Tensor
from torchvision.ops import box_convert

from modinv.analysis.common import AnalysisRun, RunOptions
from modinv.errors import ModinvError
from modinv.models.base import StagedModel

__all__ = ["classification_top1", "detection_ap", "detr_predictions", "predictions", "trace_detections",
           "COCO_STAT_NAMES"]

Transform = Callable[[Tensor], Tensor]

# The 12 numbers of COCOeval.summarize() for boxes, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@torch.no_grad()
def predictions(model: StagedModel, images: Tensor, sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
    """A detector's detections for a batch of [0, 1] images at the model's input size.

    Returns one dict per image with ``scores`` (Q), ``labels`` (Q, int64 class indices; DETR's are
    COCO category ids) and ``boxes`` (Q×4 xyxy pixels), all on the CPU. Boxes are in pixels of the
    input images, or of ``sizes`` (B×2 (h, w) per image) when given. Every query is returned;
    filter by score as needed.
    """
    if sizes is None:
        sizes = torch.tensor([list(images.shape[-2:])] * images.shape[0])
    return trace_detections(model, model.trace(images), sizes)


detr_predictions = predictions  # the name older callers use


@torch.no_grad()
def trace_detections(model: StagedModel, trace, sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
    """:func:`predictions` from a trace already computed: the post-processing the detector's adapter
    declares (``model.detections``); boxes in pixels of ``sizes`` (default: the model's input size)."""
    return model.detections(trace, sizes)


def _apply(transform: Transform | None, images: Tensor) -> Tensor:
    if transform is None:
        return images
    out = transform(images)
    if not isinstance(out, Tensor) or out.shape != images.shape:
        raise ModinvError(f"transform must return a batch of shape {tuple(images.shape)}")
    return out


def _check_size(model: StagedModel, source) -> None:
    size = getattr(source, "size", None)
    inner = source
    while size is None and inner is not None:
        inner = getattr(inner, "dataset", None)
        size = getattr(inner, "size", None)
    if size is not None and tuple(size) != tuple(model.input_size):
        raise ModinvError(
            f"the source yields {size[0]}×{size[1]} images, model {model.name!r} takes "
            f"{model.input_size[0]}×{model.input_size[1]}; open the source with size=model.input_size"
        )


def _coco_of(source):
    inner = source
    while inner is not None:
        if hasattr(inner, "coco"):
            return inner.coco
        inner = getattr(inner, "dataset", None)
    raise ModinvError("detection AP needs a COCO source (coco:ROOT[:split]) with its annotations")


def _coco_results(image_id: int, pred: dict[str, Tensor], score_threshold: float) -> list[dict[str, Any]]:
    """The detections of one image above ``score_threshold`` as COCO result records (xywh boxes)."""
    keep = pred["scores"] > score_threshold
    xywh = box_convert(pred["boxes"][keep], "xyxy", "xywh")
    return [{"image_id": image_id, "category_id": int(label), "bbox": [round(v, 3) for v in box], "score": float(score)}
            for score, label, box in zip(pred["scores"][keep].tolist(), pred["labels"][keep].tolist(), xywh.tolist())]


def detection_ap(
    model: StagedModel,
    source,
    batch_size: int = 8,
    transform: Transform | None = None,
    limit: int | None = None,
    score_threshold: float = 0.0,
    amp: str = "off",
) -> dict[str, Any]:
    """COCO box AP of a detector on a COCO source (pycocotools ``COCOeval``, ``iouType="bbox"``).

    Returns ``{"AP", "AP50", "AP75", "AP_small", ..., "AR100", ...}`` (in [0, 1]; None where COCO
    leaves a number undefined, e.g. no object of that size), ``"n_images"``, ``"n_detections"``,
    ``"score_threshold"``. Detections scoring at most ``score_threshold`` are dropped (0.0 keeps
    all 100 queries per image, as DETR is usually evaluated). ``amp``: float32 ("off", default)
    unless bf16 autocast is asked for (:func:`modinv.analysis.common.precision`).
    """
    from pycocotools.cocoeval import COCOeval

    coco = _coco_of(source)
    _check_size(model, source)
    run = AnalysisRun(model, "AP", RunOptions(batch_size, limit, amp, progress=False))
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for batch in run.batches(source, ("orig_size", "image_id"), "detection AP needs COCO items with image_id and orig_size"):
        images = _apply(transform, batch["image"])
        with run.autocast():
            found = predictions(model, images, sizes=batch["orig_size"])
        for image_id, pred in zip(batch["image_id"].tolist(), found):
            image_ids.append(int(image_id))
            results += _coco_results(int(image_id), pred, score_threshold)
    out: dict[str, Any] = {"n_images": len(image_ids), "n_detections": len(results),
                           "score_threshold": float(score_threshold), "iou_type": "bbox",
                           "boxes": "scaled to each image's original size"}
    if not image_ids:
        raise ModinvError("the COCO source yielded no usable images")
    has_objects = any(coco.getAnnIds(imgIds=[i], iscrowd=False) for i in image_ids)
    if not results or not has_objects:
        stats = [0.0 if has_objects else None] * len(COCO_STAT_NAMES)
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the table
            detections = coco.loadRes(results)
            evaluator = COCOeval(coco, detections, iouType="bbox")
            evaluator.params.imgIds = sorted(set(image_ids))
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = [None if float(v) < 0 else float(v) for v in evaluator.stats]
    out.update(dict(zip(COCO_STAT_NAMES, stats)))
    return out


@torch.no_grad()
def classification_top1(
    model: StagedModel,
    source,
    batch_size: int = 8,
    transform: Transform | None = None,
    limit: int | None = None,
    amp: str = "off",
) -> dict[str, Any]:
    """Top-1 accuracy of a classifier (``model.output(trace)`` = B×classes logits) against the
    items' ``label`` (an ImageNet-style source): ``{"top1", "n", "correct"}``; float32 unless ``amp``
    opts in to bf16 autocast."""
    _check_size(model, source)
    run = AnalysisRun(model, "top-1", RunOptions(batch_size, limit, amp, progress=False))
    correct, n = 0, 0
    for batch in run.batches(source):
        labels = batch.get("label")
        if not isinstance(labels, Tensor):
            raise ModinvError("top-1 accuracy needs labelled items: use an imagenet:ROOT source (a folder per class)")
        images = _apply(transform, batch["image"])
        with run.autocast():
            logits = model.output(model.trace(images))
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ModinvError(f"model {model.name!r} does not output class logits; top-1 needs a classifier")
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        n += labels.shape[0]
    if n == 0:
        raise ModinvError("the source yielded no usable images")
    return {"top1": correct / n, "n": n, "correct": correct}
