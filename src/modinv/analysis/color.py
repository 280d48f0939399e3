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
    AnalysisResult, AnalysisRun, RunOptions, chain_stages, figure_field, interval_record, model_record, precision,
)
from modinv.errors import ModinvError
from modinv.models.roles import missing_role
from modinv.metrics import summarize

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


def _units(run: AnalysisRun, source, chosen: dict[int, str] | None, min_area: float, counts: dict[str, int]):
    """(image 3×H×W, mask H×W, category id, category name, image name) for every chosen category in
    every image of ``run.batches(source)``."""
    names = dict(getattr(source, "categories", {}) or {})
    why = ("the color analysis needs object masks and category labels: use a COCO source "
           "(--data coco:ROOT[:split]) opened with masks")
    for batch in run.batches(source, ("masks", "labels"), why, bar=False):
        counts["unreadable"] += int(batch.get("skipped", 0))
        for i in range(batch["image"].shape[0]):
            counts["images"] += 1
            labels, masks = batch["labels"][i], batch["masks"][i]
            used = False
            for cid in [int(c) for c in torch.unique(labels).tolist()]:
                if chosen is not None and cid not in chosen:
                    continue
                mask = masks[labels == cid].bool().any(0)
                fraction = float(mask.float().mean())
                if fraction == 0.0 or fraction < min_area:
                    counts["small_masks"] += 1
                    continue
                used = True
                yield batch["image"][i].cpu(), mask, cid, names.get(cid, str(cid)), str(batch["name"][i])
            if not used:
                counts["images_without_units"] += 1


class _Color:
    """The per-group step of :func:`color_analysis` (a group: the units of one forward pass) and its
    result builder."""

    def __init__(self, run: AnalysisRun, chain, filters: tuple[str, ...], stages: list[str], n_examples: int) -> None:
        self.run, self.model, self.chain = run, run.model, chain
        self.filters, self.stages, self.n_examples = filters, stages, n_examples
        self.units: list[dict[str, Any]] = []
        self.examples: list[dict[str, Any]] = []

    def __call__(self, group: list[tuple]) -> None:
        batch = torch.stack([perturbations(img, mask, self.filters) for img, mask, *_ in group])  # U×F×3×H×W
        u, f = batch.shape[:2]
        with self.run.autocast():
            trace = self.model.trace(batch.flatten(0, 1).to(self.run.device))
            recons = {s: self.chain.reconstruct(trace, s).float().cpu().unflatten(0, (u, f)) for s in self.stages}
        values = {INPUT: pairwise_mse(list(batch.transpose(0, 1)))}
        values |= {s: pairwise_mse(list(r.transpose(0, 1))) for s, r in recons.items()}
        for k, (image, mask, cid, cname, name) in enumerate(group):
            self.units.append({"image": name, "category": cname, "category_id": cid,
                               "mask_fraction": float(mask.float().mean()),
                               **{key: float(v[k]) for key, v in values.items()}})
            if len(self.examples) < self.n_examples:
                j = len(self.examples) % f
                self.examples.append({"image": name, "category": cname, "filter": self.filters[j], "original": image,
                                      "perturbed": batch[k, j],
                                      "reconstructions": {s: recons[s][k, j] for s in self.stages}})

    def feed(self, units, per_pass: int) -> None:
        """Run the units in groups of ``per_pass`` under a tqdm bar."""
        group: list[tuple] = []
        with tqdm(desc="color", unit="unit", disable=not self.run.options.progress) as bar:
            for unit in units:
                group.append(unit)
                if len(group) == per_pass:
                    self(group)
                    bar.update(len(group))
                    group = []
            if group:
                self(group)
                bar.update(len(group))

    def result(self, chosen: dict[int, str] | None, counts: dict[str, int]) -> ColorResult:
        units, keys = self.units, [INPUT] + self.stages
        per_category: dict[str, dict[str, Any]] = {}
        for cname in dict.fromkeys(u["category"] for u in units):
            mine = [u for u in units if u["category"] == cname]
            per_category[cname] = {key: summarize([u[key] for u in mine], low=0.0, high=1.0) for key in keys}
        pairwise = {key: summarize([u[key] for u in units], low=0.0, high=1.0) for key in keys}
        filters = self.filters
        return ColorResult(
            **model_record(self.model), label=self.model.name, filters=list(filters),
            masked_filters=[f for f in filters if f not in WHOLE_IMAGE_FILTERS],
            whole_image_filters=[f for f in filters if f in WHOLE_IMAGE_FILTERS],
            stages=self.stages, pairwise_mse=pairwise, ci=interval_record(pairwise, per_category, over=CI_OVER),
            per_category=per_category, units=units, n_units=len(units), n_images=counts["images"],
            skipped={k: v for k, v in counts.items() if k != "images"},
            categories={str(k): v for k, v in chosen.items()} if chosen else "all present",
            precision=self.run.precision,
            examples=[{k: e[k] for k in ("image", "category", "filter")} for e in self.examples],
            figure_data=self.examples,
        )


def _check_filters(filters: tuple[str, ...]) -> None:
    bad = [f for f in filters if f not in FILTERS]
    if bad:
        raise ModinvError(f"unknown color filter(s) {bad}; valid: {', '.join(FILTERS)}")
    if len(filters) < 2 or len(set(filters)) != len(filters):
        raise ModinvError("the pairwise MSE needs at least 2 distinct filters")


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
    _check_filters(filters)
    stages = list(stages or chain_stages(model, chain))
    if not stages:
        raise ModinvError(f"the inverse chain reconstructs no stage of {model.name!r}")
    chosen = resolve_categories(source, categories)
    run = AnalysisRun(model, "color", RunOptions(max(batch_size, 1), limit, amp, progress=progress))
    counts = {"images": 0, "unreadable": 0, "small_masks": 0, "images_without_units": 0}
    step = _Color(run, chain, filters, stages, n_examples)
    step.feed(_units(run, source, chosen, min_area, counts), max(1, batch_size // len(filters)))
    if not step.units:
        wanted = "the chosen categories" if chosen else "any category"
        raise ModinvError(f"no object masks of {wanted} in the {counts['images']} image(s) read: nothing to perturb")
    return step.result(chosen, counts)


def task_of(model) -> str:
    """The model's declared task (``model.meta.task``): "detection" (COCO box AP) or
    "classification" (top-1); a model that declares none has no task metric to measure."""
    task = getattr(getattr(model, "meta", None), "task", None)
    if task not in TASK_METRICS:
        raise missing_role("color --robustness", "a task (detection or classification) with a task metric", model)
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
