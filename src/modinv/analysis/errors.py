"""Detection errors of DETR seen through reconstructions (paper Sec. 4.6, Fig. 10), with an error-detection score.

    result = detection_error_analysis(model, chain, coco_source)    # a DetectionErrorResult
    detection_error_figure(result, "errors.png")                     # or `modinv analyze errors`

The model must declare itself a detector (``model.meta.task == "detection"``) with DETR's output
(``model.output(trace)``: logits and pred_boxes); class names come from ``model.meta.class_names``
and the source's categories.

Figure: one row per image: the input with its ground-truth boxes (green: found by DETR, red: missed),
DETR's predictions (score > threshold, default 0.7, with class names), then the reconstruction from
each stage (bb, enc, dec, pred) with the ground-truth boxes drawn thin.

The score the paper leaves as future work: does the reconstruction show where DETR will miss an
object? For every ground-truth object (COCO, crowds left out) and stage s:

- ``discrepancy_s`` = MSE ([0, 1] pixels, all channels) between the input and the reconstruction
  from s over the pixels of the object's box (the box rounded outwards to whole pixels);
- ``relative_s`` = ``discrepancy_s`` / the MSE over the whole image at stage s. Reconstruction
  error differs widely between images (texture, clutter) and stages; dividing by the image's own
  error makes the score say "this object is reconstructed worse than the rest of its image" —
  what the paper describes for missed objects (they fade while the scene stays) — instead of "this
  image is hard". It is the main score (``auroc``); the raw one is reported too (``auroc_raw``).

Found vs missed: an object is *found* when a prediction with score > threshold of the same class
matches it at IoU ≥ 0.5 in COCO's one-to-one greedy matching: predictions in descending score
order each take the still unmatched ground truth of their class with the highest IoU (≥ 0.5);
everything else is *missed*. Predictions: :func:`modinv.analysis.task.detr_predictions` (softmax
over DETR's 92 logits, the last, "no object", dropped, score and class = max and argmax of the rest
as in DETR's post-processing, boxes cx, cy, w, h normalised -> xyxy pixels of the model's input).

AUROC (missed = positive class): the probability that a missed object scores higher than a found
one, ties counting one half — the Mann-Whitney U divided by n_missed·n_found, from mid-ranks
(:func:`modinv.metrics.auroc`); 0.5 = no information; null when either class is empty. Its 95% CI is Hanley &
McNeil's (1982) normal approximation, clipped to [0, 1]. Baseline ``small_box``: the AUROC of
minus the box area (small objects are missed more often), so a reader can see whether the
discrepancy says more than the object's size.

``errors.json`` (``DetectionErrorResult.to_json()``, plus from the CLI ``data``, ``inverse``,
``figure``): ``analysis, model, weights, n_images, pixel_space, precision, threshold,
iou_threshold, matching, discrepancy, auroc_definition, stages {stage: {auroc, auroc_ci95,
auroc_raw, n_missed, n_found, relative_missed, relative_found}}, baselines {small_box: {auroc,
auroc_ci95, n_missed, n_found}}, n_objects, n_missed, n_found, objects [{image, image_id, index,
category_id, category, box, area, found, matched_score, matched_iou, discrepancy {stage},
relative {stage}}]``; ``relative_missed``/``relative_found`` are ``{"mean", "ci95", "n",
"std"}`` of the relative discrepancy over the objects of each class (null when there are none).
Undefined numbers (an empty class, an image reconstructed perfectly) are written as null.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from modinv.analysis.common import (
    AnalysisResult, AnalysisRun, RunOptions, chain_stages, figure_field, model_record,
)
from modinv.analysis.task import trace_detections
from modinv.errors import ModinvError
from modinv.figures import plt, save_figure, to_numpy_image
from modinv.inverse.chain import InverseChain
from modinv.metrics import as_float_array, auroc, auroc_ci, mean_summary
from modinv.models.base import StagedModel, Trace
from modinv.models.roles import missing_role

DEFAULT_THRESHOLD = 0.7
IOU_THRESHOLD = 0.5
MATCHING = ("COCO-style greedy one-to-one matching: predictions with score > threshold in descending score order "
            "each take the unmatched ground truth of the same class with the highest IoU, if that IoU >= 0.5")
DISCREPANCY = ("relative_s = MSE(input, reconstruction from s) inside the object's box / the same MSE over the whole "
               "image ([0, 1] pixels, all channels); discrepancy_s is the numerator")
AUROC_DEFINITION = ("P(score of a missed object > score of a found one) + 0.5 P(tie) = Mann-Whitney U / "
                    "(n_missed n_found) from mid-ranks; 95% CI: Hanley & McNeil (1982)")
FOUND_COLOR, MISSED_COLOR, PRED_COLOR = "#39d353", "#ff3b30", "#ffd60a"

# -- predictions and matching ---------------------------------------------------------------------------

def filter_detections(prediction: Mapping[str, Tensor], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Tensor]:
    """The detections of one image (``scores``, ``labels``, ``boxes``) with score > ``threshold``, by
    descending score."""
    keep = prediction["scores"] > threshold
    order = prediction["scores"][keep].argsort(descending=True, stable=True)
    return {k: prediction[k][keep][order] for k in ("boxes", "labels", "scores")}


def detections(model: StagedModel, trace: Trace, threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, Tensor]]:
    """Per image the detector's detections with score > ``threshold``, by descending score, read
    off a trace already computed (:func:`modinv.analysis.task.trace_detections`: softmax over the
    logits, no-object dropped, max/argmax = score/COCO category id, boxes xyxy pixels of the input)."""
    return [filter_detections(p, threshold) for p in trace_detections(model, trace)]


def match_objects(gt_boxes: Tensor, gt_labels: Tensor, pred_boxes: Tensor, pred_labels: Tensor, pred_scores: Tensor,
                  iou_threshold: float = IOU_THRESHOLD) -> dict[str, Tensor]:
    """COCO's greedy one-to-one matching of predictions to ground truth (xyxy boxes).

    Predictions by descending score (ties: in the given order) each take the unmatched ground truth
    of the same label with the highest IoU, if that IoU >= ``iou_threshold``. Returns ``{"found":
    bool G, "prediction": int64 G (matched prediction index, -1), "iou": float G (0 when missed)}``.
    """
    from torchvision.ops import box_iou

    g = gt_boxes.shape[0]
    found = torch.zeros(g, dtype=torch.bool)
    matched = torch.full((g,), -1, dtype=torch.int64)
    ious = torch.zeros(g)
    if g == 0 or pred_boxes.shape[0] == 0:
        return {"found": found, "prediction": matched, "iou": ious}
    iou = box_iou(pred_boxes.float().cpu(), gt_boxes.float().cpu())
    iou[pred_labels.cpu()[:, None] != gt_labels.cpu()[None, :]] = -1.0
    for p in torch.argsort(pred_scores.cpu(), descending=True, stable=True).tolist():
        candidates = iou[p].clone()
        candidates[found] = -1.0
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            found[best], matched[best], ious[best] = True, p, float(candidates[best])
    return {"found": found, "prediction": matched, "iou": ious}


# -- discrepancy -----------------------------------------------------------------------------------------

def box_pixels(box: Sequence[float], image_size: Sequence[int]) -> tuple[int, int, int, int]:
    """xyxy box -> integer pixel ranges (y0, y1, x0, x1) rounded outwards, clipped, at least 1 pixel."""
    h, w = (int(s) for s in image_size)
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, r0 = min(max(int(math.floor(x0)), 0), w - 1), min(max(int(math.floor(y0)), 0), h - 1)
    c1, r1 = max(min(int(math.ceil(x1)), w), c0 + 1), max(min(int(math.ceil(y1)), h), r0 + 1)
    return r0, r1, c0, c1


def box_discrepancy(image: Tensor, reconstruction: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(inside, relative, whole)``: per box (N×4 xyxy) the MSE between ``image`` and
    ``reconstruction`` (3×H×W) over the box's pixels, that divided by the whole image's MSE, and the
    whole image's MSE."""
    sq = (image.float().cpu() - reconstruction.float().cpu()).pow(2).mean(0)
    whole = float(sq.mean())
    inside = torch.tensor([float(sq[r0:r1, c0:c1].mean()) for r0, r1, c0, c1 in
                           (box_pixels(b, sq.shape) for b in boxes.tolist())], dtype=torch.float64)
    relative = inside / whole if whole > 0 else torch.full_like(inside, math.nan)
    return inside, relative, whole


# -- the analysis ----------------------------------------------------------------------------------------

def _category_names(model: StagedModel, source) -> dict[int, str]:
    """Class index -> name: the model's declared class names (placeholders such as ``LABEL_12``,
    ``N/A`` and the no-object class left out), then the source's categories on top."""
    names: dict[int, str] = {}
    for i, name in enumerate(model.meta.class_names or ()):
        if not str(name).startswith("LABEL_") and str(name) not in ("N/A", "no object"):
            names[i] = str(name)
    names.update(getattr(source, "categories", {}) or {})
    return names


@dataclasses.dataclass(kw_only=True)
class DetectionErrorResult(AnalysisResult):
    """The numbers of ``errors.json``; ``figure_data``: ``{"rows": [{"name", "image", "recons" {stage},
    "gt" [(box, name, found)], "predictions" [(box, name, score)]}], "stages", "threshold"}``."""

    analysis: str = "errors"
    model: str
    weights: str
    n_images: int
    pixel_space: str = "[0, 1]"
    threshold: float
    iou_threshold: float
    matching: str = MATCHING
    discrepancy: str = DISCREPANCY
    auroc_definition: str = AUROC_DEFINITION
    positive_class: str = "missed"
    precision: str = "float32"
    stages: dict[str, dict[str, Any]]
    baselines: dict[str, dict[str, Any]]
    n_objects: int
    n_missed: int
    n_found: int
    objects: list[dict[str, Any]]
    figure_data: dict[str, Any] = figure_field()


def _object_record(batch: dict[str, Any], i: int, j: int, pred: dict[str, Tensor], match: dict[str, Tensor],
                   per_stage: dict[str, tuple], names: dict[int, str]) -> dict[str, Any]:
    """One ground-truth object ``j`` of image ``i`` of ``batch``: its box, whether it was found, its
    per-stage discrepancies."""
    box = [float(v) for v in batch["boxes"][i][j]]
    label, p = int(batch["labels"][i][j]), int(match["prediction"][j])
    return {
        "image": str(batch["name"][i]),
        "image_id": int(batch["image_id"][i]) if "image_id" in batch else None,
        "index": int(batch["index"][i]),
        "category_id": label,
        "category": names.get(label, str(label)),
        "box": box,
        "area": max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0),
        "found": bool(match["found"][j]),
        "matched_score": float(pred["scores"][p]) if p >= 0 else None,
        "matched_iou": float(match["iou"][j]) if p >= 0 else None,
        "discrepancy": {s: float(v[0][j]) for s, v in per_stage.items()},
        "relative": {s: _number(v[1][j]) for s, v in per_stage.items()},
    }


class _DetectionErrors:
    """The per-batch step of :func:`detection_error_analysis` and its result builder."""

    def __init__(self, run: AnalysisRun, chain: InverseChain, stages: list[str], names: dict[int, str],
                 threshold: float, iou_threshold: float, figure_images: int) -> None:
        self.run, self.model, self.chain, self.stages, self.names = run, run.model, chain, stages, names
        self.threshold, self.iou_threshold, self.figure_images = threshold, iou_threshold, figure_images
        self.objects: list[dict[str, Any]] = []
        self.figure: dict[str, Any] = {"rows": [], "stages": stages, "threshold": threshold}

    def __call__(self, batch: dict[str, Any]) -> None:
        with self.run.autocast():
            trace = self.model.trace(batch["image"])
            recons = {s: self.chain.reconstruct(trace, s).float().cpu() for s in self.stages}
            predictions = detections(self.model, trace, self.threshold)  # from the same frozen forward
        images = batch["image"].float().cpu()
        for i in range(images.shape[0]):
            gt_boxes, gt_labels, pred = batch["boxes"][i].float(), batch["labels"][i].long(), predictions[i]
            match = match_objects(gt_boxes, gt_labels, pred["boxes"], pred["labels"], pred["scores"], self.iou_threshold)
            per_stage = {s: box_discrepancy(images[i], recons[s][i], gt_boxes) for s in self.stages}
            self.objects += [_object_record(batch, i, j, pred, match, per_stage, self.names)
                             for j in range(gt_boxes.shape[0])]
            if len(self.figure["rows"]) < self.figure_images:
                self.figure["rows"].append(self._figure_row(batch, i, images[i], recons, pred, match))

    def _figure_row(self, batch, i: int, image: Tensor, recons, pred, match) -> dict[str, Any]:
        name = lambda label: self.names.get(int(label), str(int(label)))  # noqa: E731
        return {"name": str(batch["name"][i]), "image": image, "recons": {s: recons[s][i] for s in self.stages},
                "gt": [(b, name(l), bool(f)) for b, l, f in
                       zip(batch["boxes"][i].tolist(), batch["labels"][i].tolist(), match["found"].tolist())],
                "predictions": [(b, name(l), float(sc)) for b, l, sc in
                         zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist())]}

    def _stage(self, s: str, missed: list[dict], found: list[dict]) -> dict[str, Any]:
        rel_m, rel_f = _finite([o["relative"][s] for o in missed]), _finite([o["relative"][s] for o in found])
        a = missed_auroc(rel_m, rel_f)
        return {"auroc": a, "auroc_ci95": auroc_ci(a, len(rel_m), len(rel_f)),
                "auroc_raw": missed_auroc([o["discrepancy"][s] for o in missed], [o["discrepancy"][s] for o in found]),
                "n_missed": len(missed), "n_found": len(found),
                "relative_missed": _mean_summary(rel_m), "relative_found": _mean_summary(rel_f)}

    def result(self, n_images: int) -> DetectionErrorResult:
        missed = [o for o in self.objects if not o["found"]]
        found = [o for o in self.objects if o["found"]]
        small = missed_auroc([-o["area"] for o in missed], [-o["area"] for o in found])
        return DetectionErrorResult(
            **model_record(self.model), n_images=n_images, threshold=self.threshold,
            iou_threshold=self.iou_threshold, stages={s: self._stage(s, missed, found) for s in self.stages},
            baselines={"small_box": {"auroc": small, "auroc_ci95": auroc_ci(small, len(missed), len(found)),
                                     "n_missed": len(missed), "n_found": len(found),
                                     "score": "minus the box area (small objects are missed more often)"}},
            n_objects=len(self.objects), n_missed=len(missed), n_found=len(found), objects=self.objects,
            precision=self.run.precision, figure_data=self.figure,
        )


@torch.no_grad()
def detection_error_analysis(
    model: StagedModel,
    chain: InverseChain,
    source,
    threshold: float = DEFAULT_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    figure_images: int = 4,
    progress: bool = True,
) -> DetectionErrorResult:
    """Found/missed ground-truth objects, their per-stage box discrepancy and its AUROC; the numbers of
    ``errors.json``, and in ``figure_data`` the first ``figure_images`` images for :func:`detection_error_figure`."""
    if model.meta.task != "detection":
        raise missing_role("errors", "a detector's post-processing of raw outputs into detections", model)
    stages = chain_stages(model, chain)
    if not stages:
        raise ModinvError(f"the inverse chain reconstructs from no stage of {model.name}")
    run = AnalysisRun(model, "errors", RunOptions(batch_size, limit, amp, progress=progress))
    step = _DetectionErrors(run, chain, stages, _category_names(model, source), threshold, iou_threshold,
                            figure_images)
    why = "the detection-error analysis needs ground-truth boxes: use a COCO source (coco:ROOT)"
    return step.result(run.feed(source, step, require=("boxes",), why=why))


def missed_auroc(missed: Sequence[float], found: Sequence[float]) -> float:
    """AUROC of a score with the missed objects as the positive class (NaN when a class is empty)."""
    return auroc(np.r_[np.asarray(missed, dtype=np.float64), np.asarray(found, dtype=np.float64)],
                 np.r_[np.ones(len(missed)), np.zeros(len(found))])


def _finite(values: Sequence[float | None]) -> np.ndarray:
    """The finite numbers among ``values`` (None and NaN dropped)."""
    x = as_float_array([math.nan if v is None else v for v in values])
    return x[np.isfinite(x)]


def _number(x: Tensor | float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean_summary(values: np.ndarray) -> dict[str, Any] | None:
    """Mean, 95% CI, n, std of ``values`` (None when there are none)."""
    return mean_summary(values) if len(values) else None


def detection_error_figure(result: DetectionErrorResult, path: str | Path, title: str | None = None) -> Path:
    """Fig. 10: per image the input with ground-truth boxes (green found, red missed), DETR's
    predictions (yellow, class and score) and the reconstruction from each stage (GT boxes thin)."""
    from matplotlib.patches import Rectangle

    figure = result.figure_data
    rows = figure["rows"]
    if not rows:
        raise ModinvError("no images to draw")
    stages = list(figure["stages"])
    columns = ["input + ground truth", f"DETR (score > {figure['threshold']:g})"] + [f"from {s}" for s in stages]
    h, w = rows[0]["image"].shape[-2:]
    cell = 2.4
    fig, axes = plt.subplots(len(rows), len(columns), squeeze=False,
                             figsize=(cell * len(columns) * w / max(h, w) + 0.4, cell * len(rows) * h / max(h, w) + 0.8))
    for i, row in enumerate(rows):
        panels = [row["image"], row["image"]] + [row["recons"][s] for s in stages]
        for j, image in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(to_numpy_image(image))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 1:
                for box, name, score in row["predictions"]:
                    _box(ax, box, PRED_COLOR, 1.5, f"{name} {score:.2f}", Rectangle)
            else:
                for box, name, found in row["gt"]:
                    color = FOUND_COLOR if found else MISSED_COLOR
                    _box(ax, box, color, 1.5 if j == 0 else 0.8, name if j == 0 else None, Rectangle)
        axes[i][0].set_ylabel(Path(row["name"]).stem[:18], fontsize=8)
    fig.suptitle(title or "Detection errors (ground truth: green = found by DETR, red = missed)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _box(ax, box, color, linewidth, label, Rectangle) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth))
    if label:
        ax.text(x0, y0, label, fontsize=6, color="black", va="top", ha="left",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8}, clip_on=True)
