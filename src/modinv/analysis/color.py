"""Color perturbations inside COCO object masks, their reconstructions per stage and task robustness (Figs. 6, 7).

    result = color_analysis(model, chain, coco_source)           # a ColorResult
    color_figure(result, "color.png"); pairwise_figure(result, "color_pairwise.png")
    result.robustness = color_robustness(model, source)          # a RobustnessResult (Fig. 7 right)

The six filters (``red``, ``green``, ``blue``: hue set to 0°, 120°, 240°; ``shift120``,
``shift240``: hue rotated; ``grayscale``: Rec. 709 luminance of the whole image) are defined in
:mod:`modinv.analysis.color_filters`; the figures are in :mod:`modinv.analysis.color_figures`.

Analysis (:func:`color_analysis`): a *unit* is one image and one object category present in it;
its mask is the union of the masks of that category's (non-crowd) instances. The six filtered
versions of the image go through the model, each stage's reconstruction is computed, and the
:func:`~modinv.analysis.color_filters.pairwise_mse` between the six versions is taken at the input
and at every stage. Numbers are means over units (images × categories) with a 95% confidence
interval over units that stays inside [0, 1] (a BCa bootstrap, :mod:`modinv.metrics.bounded`;
``ci`` names the methods used).

Robustness (:func:`color_robustness`, Fig. 7 right): the task metric with each filter applied to
the whole image and without one, chosen by the model's declared task (``model.meta.task``):
a detector's COCO box AP (:func:`modinv.analysis.task.detection_ap`), a classifier's top-1
accuracy (:func:`modinv.analysis.task.classification_top1`).

``color.json`` (``ColorResult.to_json()``, plus from the CLI ``inverse``, ``data``, ``compare``,
``figure`` and ``figures``): ``{"analysis": "color", "model", "weights", "label", "filters",
"masked_filters", "whole_image_filters", "stages", "pairwise_mse": {"input"|stage: {"mse", "ci95",
"n", "std", "ci_method", ...}}, "per_category": {name: {"input"|stage: summary}}, "units": [{"image", "category",
"category_id", "mask_fraction", "input", stage...}], "n_units", "n_images", "skipped",
"categories", "pixel_space", "ci", "grayscale", "precision", "examples", "robustness" (or null)}``.
``robustness``: ``{"task", "metric", "model", "scores": {"none"|filter: value or null}, "details":
{...}, "precision", "data", "label_map"}`` (``label_map``: the class indices of an ImageNet-style source, "imagenet"
for the standard ImageNet-1k indices of synset folders, as ``modinv eval-task`` resolves them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from modinv.analysis.color_filters import (
    FILTERS,
    GRAYSCALE_DEFINITION,
    WHOLE_IMAGE_FILTERS,
    image_filter,
    pairwise_mse,
    perturbations,
)
from modinv.analysis.common import (
    AnalysisResult, chain_stages, figure_field, interval_record, model_record, precision,
)
from modinv.errors import ModinvError
from modinv.metrics import summarize
from modinv.runtime import autocast

CI_OVER = "units (image x category)"
INPUT = "input"
TASK_METRICS = {"detection": "AP", "classification": "top1"}


@dataclasses.dataclass(kw_only=True)
class RobustnessResult(AnalysisResult):
    """The task metric without a filter (``"none"``) and with each filter on the whole image."""

    task: str
    metric: str
    model: str
    scores: dict[str, float | None]  # "none"|filter -> metric value (None where COCO leaves it undefined)
    details: dict[str, dict[str, Any]]  # "none"|filter -> the task evaluation's full result
    precision: str = "float32"
    data: str | None = None
    label_map: str | None = None  # class indices of an imagenet source: "imagenet" (ImageNet-1k) or "sorted"


@dataclasses.dataclass(kw_only=True)
class ColorResult(AnalysisResult):
    """The numbers of ``color.json``; ``figure_data`` holds the example rows of Fig. 6 (tensors:
    ``original``, ``perturbed``, ``reconstructions`` {stage}, with ``image``, ``category``, ``filter``)."""

    analysis: str = "color"
    model: str
    weights: str
    label: str
    filters: list[str]
    masked_filters: list[str]
    whole_image_filters: list[str]
    stages: list[str]
    pairwise_mse: dict[str, dict[str, Any]]  # "input"|stage -> summary over units
    per_category: dict[str, dict[str, dict[str, Any]]]
    units: list[dict[str, Any]]
    n_units: int
    n_images: int
    skipped: dict[str, int]
    categories: dict[str, str] | str
    pixel_space: str = "[0, 1]"
    ci: dict[str, Any] = dataclasses.field(default_factory=dict)  # the interval methods used
    grayscale: str = GRAYSCALE_DEFINITION
    precision: str = "float32"
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    robustness: RobustnessResult | None = None
    figure_data: list[dict[str, Any]] = figure_field(default=())

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["robustness"] = None if self.robustness is None else self.robustness.to_json()
        return out


# -- the analysis --------------------------------------------------------------------------------------

def resolve_categories(source, categories: Iterable[str | int] | None) -> dict[int, str] | None:
    """COCO category ids -> names for ``categories`` (names, case-insensitive, or ids); ``None``
    means every category (returns None)."""
    known: dict[int, str] = dict(getattr(source, "categories", {}) or {})
    if categories is None:
        return None
    categories = list(categories)
    if not categories:
        return None
    by_name = {name.lower(): cid for cid, name in known.items()}
    out: dict[int, str] = {}
    for c in categories:
        text = str(c).strip()
        if text.lower() in by_name:
            cid = by_name[text.lower()]
        elif text.isdigit() and (int(text) in known or not known):
            cid = int(text)
        else:
            valid = ", ".join(f"{n} ({i})" for i, n in sorted(known.items())) or "none (the source has no categories)"
            raise ModinvError(f"unknown COCO category {text!r}; this source has: {valid}")
        out[cid] = known.get(cid, str(cid))
    return out


def _units(source, chosen: dict[int, str] | None, batch_size: int, limit: int | None, min_area: float,
           counts: dict[str, int]):
    """(image 3×H×W, mask H×W, category id, image name) for every chosen category in every image."""
    from modinv.data import make_loader

    names = dict(getattr(source, "categories", {}) or {})
    seen = 0
    for batch in make_loader(source, batch_size=batch_size, shuffle=False):
        counts["unreadable"] += int(batch.get("skipped", 0))
        if batch["image"].shape[0] and "masks" not in batch:
            raise ModinvError(
                "the color analysis needs object masks and category labels: use a COCO source "
                "(--data coco:ROOT[:split]) opened with masks"
            )
        for i in range(batch["image"].shape[0]):
            if limit is not None and seen >= limit:
                return
            seen += 1
            counts["images"] += 1
            labels, masks = batch["labels"][i], batch["masks"][i]
            present = [int(c) for c in torch.unique(labels).tolist()]
            used = False
            for cid in present:
                if chosen is not None and cid not in chosen:
                    continue
                mask = masks[labels == cid].bool().any(0)
                fraction = float(mask.float().mean())
                if fraction == 0.0 or fraction < min_area:
                    counts["small_masks"] += 1
                    continue
                used = True
                yield batch["image"][i], mask, cid, names.get(cid, str(cid)), str(batch["name"][i])
            if not used:
                counts["images_without_units"] += 1
        if limit is not None and seen >= limit:
            return


@torch.no_grad()
def color_analysis(
    model,
    chain,
    source,
    categories: Iterable[str | int] | None = None,
    filters: Sequence[str] = FILTERS,
    stages: Sequence[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    min_area: float = 0.0,
    n_examples: int = 6,
    amp: str = "off",
    progress: bool = True,
) -> ColorResult:
    """Pairwise MSE between the filtered versions of every (image, category) unit at the input and
    at each stage's reconstruction (Fig. 7 left), and examples for Fig. 6.

    ``source``: a COCO source at the model's input size (items with ``masks`` and ``labels``).
    ``categories``: COCO names or ids (default: every category present). ``batch_size``: images per
    forward pass (each unit is ``len(filters)`` images; at least one unit per pass). ``limit``: at
    most this many images. ``min_area``: skip masks covering less than this fraction of the image.
    Returns a :class:`ColorResult`; its ``figure_data`` holds the example tensors of Fig. 6.
    """
    filters = tuple(filters)
    bad = [f for f in filters if f not in FILTERS]
    if bad:
        raise ModinvError(f"unknown color filter(s) {bad}; valid: {', '.join(FILTERS)}")
    if len(filters) < 2 or len(set(filters)) != len(filters):
        raise ModinvError("the pairwise MSE needs at least 2 distinct filters")
    stages = list(stages or chain_stages(model, chain))
    if not stages:
        raise ModinvError(f"the inverse chain reconstructs no stage of {model.name!r}")
    chosen = resolve_categories(source, categories)
    device = model.device
    dtype, used = precision(device, amp)
    per_pass = max(1, batch_size // len(filters))
    counts = {"images": 0, "unreadable": 0, "small_masks": 0, "images_without_units": 0}
    units: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []

    def flush(group: list[tuple]) -> None:
        batch = torch.stack([perturbations(img, mask, filters) for img, mask, *_ in group])  # U×F×3×H×W
        u, f = batch.shape[:2]
        flat = batch.flatten(0, 1).to(device)
        with autocast(device, dtype):
            trace = model.trace(flat)
        recons = {}
        for stage in stages:
            with autocast(device, dtype):
                recons[stage] = chain.reconstruct(trace, stage).float().cpu().unflatten(0, (u, f))
        values = {INPUT: pairwise_mse(list(batch.transpose(0, 1)))}
        values |= {s: pairwise_mse(list(r.transpose(0, 1))) for s, r in recons.items()}
        for k, (image, mask, cid, cname, name) in enumerate(group):
            units.append({"image": name, "category": cname, "category_id": cid,
                          "mask_fraction": float(mask.float().mean()),
                          **{key: float(v[k]) for key, v in values.items()}})
            if len(examples) < n_examples:
                j = len(examples) % f
                examples.append({"image": name, "category": cname, "filter": filters[j], "original": image,
                                 "perturbed": batch[k, j], "reconstructions": {s: recons[s][k, j] for s in stages}})

    group: list[tuple] = []
    bar = tqdm(desc="color", unit="unit", disable=not progress)
    for unit in _units(source, chosen, max(batch_size, 1), limit, min_area, counts):
        group.append(unit)
        if len(group) == per_pass:
            flush(group)
            bar.update(len(group))
            group = []
    if group:
        flush(group)
        bar.update(len(group))
    bar.close()
    if not units:
        wanted = "the chosen categories" if chosen else "any category"
        raise ModinvError(f"no object masks of {wanted} in the {counts['images']} image(s) read: nothing to perturb")
    keys = [INPUT] + stages
    per_category: dict[str, dict[str, Any]] = {}
    for cname in dict.fromkeys(u["category"] for u in units):
        mine = [u for u in units if u["category"] == cname]
        per_category[cname] = {key: summarize([u[key] for u in mine], low=0.0, high=1.0) for key in keys}
    pairwise = {key: summarize([u[key] for u in units], low=0.0, high=1.0) for key in keys}
    return ColorResult(
        **model_record(model),
        label=model.name,
        filters=list(filters),
        masked_filters=[f for f in filters if f not in WHOLE_IMAGE_FILTERS],
        whole_image_filters=[f for f in filters if f in WHOLE_IMAGE_FILTERS],
        stages=stages,
        pairwise_mse=pairwise,
        ci=interval_record(pairwise, per_category, over=CI_OVER),
        per_category=per_category,
        units=units,
        n_units=len(units),
        n_images=counts["images"],
        skipped={k: v for k, v in counts.items() if k != "images"},
        categories={str(k): v for k, v in chosen.items()} if chosen else "all present",
        precision=used,
        examples=[{k: e[k] for k in ("image", "category", "filter")} for e in examples],
        figure_data=examples,
    )


def task_of(model) -> str:
    """The model's declared task (``model.meta.task``): "detection" (COCO box AP) or
    "classification" (top-1); a model that declares none has no task metric to measure."""
    task = getattr(getattr(model, "meta", None), "task", None)
    if task not in TASK_METRICS:
        raise ModinvError(f"{model.name!r} declares no task (detection or classification): "
                          "there is no task metric to measure under recoloring")
    return task


def color_robustness(
    model,
    source,
    filters: Sequence[str] = FILTERS,
    batch_size: int = 8,
    limit: int | None = None,
    task: str = "auto",
    amp: str = "off",
) -> RobustnessResult:
    """The task metric without a filter ("none") and with each filter applied to the whole image.

    ``task``: "detection" (COCO box AP with :func:`modinv.analysis.task.detection_ap`; ``source``
    a COCO source), "classification" (top-1 with :func:`modinv.analysis.task.classification_top1`;
    ``source`` labelled, e.g. ImageNet folders, with ImageNet-1k indices for synset folders: open it
    with :func:`modinv.data.sources.task_source_options`) or "auto" (the model's declared task,
    :func:`task_of`). ``amp``: as for the task metric (float32 unless "bf16"/"auto").
    """
    from modinv.analysis import task as tasks

    task = task_of(model) if task == "auto" else task
    if task not in TASK_METRICS:
        raise ModinvError(f"unknown task {task!r}; valid: auto, {', '.join(TASK_METRICS)}")
    if task == "classification":
        check_classification_source(model, source)
    fn = tasks.detection_ap if task == "detection" else tasks.classification_top1
    metric = TASK_METRICS[task]
    scores: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    for name in ("none",) + tuple(filters):
        transform = None if name == "none" else image_filter(name)
        result = fn(model, source, batch_size, transform=transform, limit=limit, amp=amp)
        if metric not in result:
            raise ModinvError(f"the {task} evaluation returned no {metric!r} (keys: {', '.join(result)})")
        value = result[metric]  # None where COCO leaves it undefined (no objects)
        scores[name] = None if value is None else float(value)
        details[name] = dict(result)
    return RobustnessResult(task=task, metric=metric, model=model.name, scores=scores, details=details,
                            precision=precision(model.device, amp)[1])


def check_classification_source(model, source) -> None:
    """Top-1 accuracy needs class-labelled images: refuse a COCO source with one sentence."""
    if getattr(source, "kind", None) == "coco":
        raise ModinvError(
            f"top-1 accuracy of {model.name!r} needs class-labelled images (e.g. --robustness-data "
            "imagenet:ROOT), not a COCO source"
        )
