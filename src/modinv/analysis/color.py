"""Color perturbations inside COCO object masks, their reconstructions per stage and task robustness (Figs. 6, 7).

The six filters (:data:`FILTERS`), computed in floating-point HSV with scikit-image's
``rgb2hsv`` / ``hsv2rgb`` (hue in [0, 1) of a full turn; no 8-bit rounding of hue, saturation or
value anywhere):

==============  =====================================================================================
``red``         hue set to 0° (saturation and value kept)
``green``       hue set to 120°
``blue``        hue set to 240°
``shift120``    hue rotated by +120° (mod 360°)
``shift240``    hue rotated by +240°
``grayscale``   the luminance Y = 0.2125 R + 0.7154 G + 0.0721 B (scikit-image's ``rgb2gray``, the
                Rec. 709 weights applied to the [0, 1] values as they are, no gamma linearisation)
                replicated to the three channels
==============  =====================================================================================

The five hue filters act inside an object mask (pixels outside it are returned bit for bit);
grayscale acts on the whole image (:data:`WHOLE_IMAGE_FILTERS`), as in the paper and the design.
Pixels without saturation (grays) have no hue, so a hue filter leaves them unchanged.

Analysis (:func:`color_analysis`): a *unit* is one image and one object category present in it;
its mask is the union of the masks of that category's (non-crowd) instances. The six filtered
versions of the image go through the model, each stage's reconstruction is computed, and the
:func:`pairwise_mse` between the six versions is taken at the input and at every stage. Numbers are
means over units (images × categories) with a 95% Student-t confidence interval over units.

Robustness (:func:`color_robustness`, Fig. 7 right): the task metric with each filter applied to
the whole image and without one: DETR's COCO box AP (:func:`modinv.analysis.task.detection_ap`),
a classifier's top-1 accuracy (:func:`modinv.analysis.task.classification_top1`).

CLI: ``modinv analyze color --model M --inverse CHAIN --data coco:ROOT --out DIR [--categories
cat bus 18 ...] [--robustness [--robustness-data SPEC]] [--compare OTHER/color.json ...]`` writes
``color.png`` (Fig. 6: original, perturbed input and reconstructions from every stage, one example
per row, the filters taken in turn), ``color_pairwise.png`` (Fig. 7 left), with ``--robustness``
``color_robustness.png`` (Fig. 7 right), and ``color.json``:
``{"analysis": "color", "model", "weights", "label", "filters", "masked_filters",
"whole_image_filters", "stages", "pairwise_mse": {"input"|stage: {"mse", "ci95", "n", "std"}},
"per_category": {name: {"input"|stage: summary}}, "units": [{"image", "category", "category_id",
"mask_fraction", "input", stage...}], "n_units", "n_images", "skipped", "categories",
"pixel_space", "ci", "grayscale", "examples", "robustness" (or null), "compare", "figures"}``.
``robustness``: ``{"task", "metric", "scores": {"none"|filter: value or null}, "details": {...}, "data"}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from modinv.analysis.common import read_compare_file
from modinv.errors import ModinvError

FILTERS: tuple[str, ...] = ("red", "green", "blue", "shift120", "shift240", "grayscale")
HUE_SET: dict[str, float] = {"red": 0.0, "green": 120.0, "blue": 240.0}  # degrees
HUE_SHIFT: dict[str, float] = {"shift120": 120.0, "shift240": 240.0}  # degrees
MASKED_FILTERS: tuple[str, ...] = ("red", "green", "blue", "shift120", "shift240")
WHOLE_IMAGE_FILTERS: tuple[str, ...] = ("grayscale",)
GRAYSCALE_WEIGHTS: tuple[float, float, float] = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray
GRAYSCALE_DEFINITION = (
    "Y = 0.2125 R + 0.7154 G + 0.0721 B of the [0, 1] RGB values (skimage.color.rgb2gray, no gamma "
    "linearisation), replicated to 3 channels, on the whole image"
)
CI_METHOD = "95% Student-t confidence interval of the mean over units (image x category)"
INPUT = "input"
LABELS = {"red": "red", "green": "green", "blue": "blue", "shift120": "120° shift", "shift240": "240° shift",
          "grayscale": "grayscale", "none": "none"}


# -- the filters ---------------------------------------------------------------------------------------

def apply_filter(image: Tensor | np.ndarray, name: str, mask: Tensor | np.ndarray | None = None,
                 channel_axis: int = -3) -> Tensor | np.ndarray:
    """``image`` recolored by filter ``name`` (one of :data:`FILTERS`), inside ``mask`` if given.

    ``image``: float RGB in [0, 1], a torch tensor or numpy array, one image 3×H×W or a batch
    B×3×H×W (channels at ``channel_axis``; pass ``-1`` for H×W×3 arrays). ``mask``: bool H×W, or
    B×H×W for a batch, True where the filter applies; ``None`` filters every pixel. Pixels outside
    the mask are returned exactly as given. Returns the same type, dtype, device and shape.
    The computation runs in float64 numpy HSV (scikit-image); see the module doc for each filter.
    """
    if name not in FILTERS:
        raise ModinvError(f"unknown color filter {name!r}; valid: {', '.join(FILTERS)}")
    is_torch = isinstance(image, Tensor)
    if is_torch:
        if not image.is_floating_point():
            raise ModinvError(f"apply_filter takes float images in [0, 1], got dtype {image.dtype}")
        array = image.detach().to("cpu", torch.float64).numpy()
    else:
        array = np.asarray(image)
        if not np.issubdtype(array.dtype, np.floating):
            raise ModinvError(f"apply_filter takes float images in [0, 1], got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.ndim < 3 or array.shape[channel_axis] != 3:
        raise ModinvError(f"apply_filter takes RGB images with 3 channels at axis {channel_axis}, "
                          f"got shape {tuple(array.shape)}")
    rgb = np.moveaxis(array, channel_axis, -1)  # ...×H×W×3
    out = _filter_rgb(np.clip(rgb, 0.0, 1.0), name)
    if mask is not None:
        m = mask.detach().to("cpu").numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        m = m.astype(bool)
        try:
            m = np.broadcast_to(m, rgb.shape[:-1])
        except ValueError:
            raise ModinvError(f"mask of shape {tuple(m.shape)} does not fit images of shape "
                              f"{tuple(rgb.shape[:-1])} (H×W or B×H×W)") from None
        out = np.where(m[..., None], out, rgb)
    out = np.moveaxis(out, -1, channel_axis)
    if is_torch:
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=image.device, dtype=image.dtype)
    return out.astype(np.asarray(image).dtype, copy=False)


def _filter_rgb(rgb: np.ndarray, name: str) -> np.ndarray:
    """Filter float64 ...×3 RGB in [0, 1] (channels last) everywhere."""
    from skimage.color import hsv2rgb, rgb2gray, rgb2hsv

    if name == "grayscale":
        return np.repeat(rgb2gray(rgb)[..., None], 3, axis=-1)
    hsv = rgb2hsv(rgb)
    if name in HUE_SET:
        hsv[..., 0] = HUE_SET[name] / 360.0
    else:
        hsv[..., 0] = np.mod(hsv[..., 0] + HUE_SHIFT[name] / 360.0, 1.0)
    return np.clip(hsv2rgb(hsv), 0.0, 1.0)


def perturbations(image: Tensor, mask: Tensor | None, filters: Sequence[str] = FILTERS) -> Tensor:
    """The filtered versions of one image 3×H×W: F×3×H×W, hue filters inside ``mask``, the whole-image
    filters (grayscale) on every pixel."""
    return torch.stack([apply_filter(image, f, None if f in WHOLE_IMAGE_FILTERS else mask) for f in filters])


def image_filter(name: str) -> Callable[[Tensor], Tensor]:
    """A batch transform B×3×H×W -> B×3×H×W applying filter ``name`` to the whole image."""
    if name not in FILTERS:
        raise ModinvError(f"unknown color filter {name!r}; valid: {', '.join(FILTERS)}")

    def transform(images: Tensor) -> Tensor:
        return apply_filter(images, name)

    transform.__name__ = f"filter_{name}"
    return transform


# -- the metric ----------------------------------------------------------------------------------------

def pairwise_mse(versions: Sequence[Tensor] | Tensor) -> Tensor:
    """Average pairwise MSE between K versions of the same image(s).

    ``versions``: a list of K tensors B×3×H×W (K versions of a batch of B images; also a K×B×3×H×W
    tensor) -> B values; or one K×3×H×W tensor (K versions of one image) -> a 0-dim tensor. The value
    is the mean over the K(K-1)/2 unordered pairs (i < j) of the per-image MSE
    ``mean((v_i - v_j)²)`` over all channels and pixels, computed in float64.
    """
    if isinstance(versions, (list, tuple)):
        stacked = torch.stack([torch.as_tensor(v) for v in versions])
        single = False
    else:
        stacked = torch.as_tensor(versions)
        single = stacked.ndim == 4
        if single:
            stacked = stacked[:, None]
    if stacked.ndim != 5:
        raise ModinvError(f"pairwise_mse takes K versions of B×3×H×W (or one K×3×H×W), got {tuple(stacked.shape)}")
    k = stacked.shape[0]
    if k < 2:
        raise ModinvError(f"pairwise_mse needs at least 2 versions, got {k}")
    x = stacked.double().flatten(2)  # K×B×P
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(k):
        for j in range(i + 1, k):
            total += (x[i] - x[j]).pow(2).mean(-1)
    out = total / (k * (k - 1) / 2)
    return out[0] if single else out


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
) -> dict[str, Any]:
    """Pairwise MSE between the filtered versions of every (image, category) unit at the input and
    at each stage's reconstruction (Fig. 7 left), and examples for Fig. 6.

    ``source``: a COCO source at the model's input size (items with ``masks`` and ``labels``).
    ``categories``: COCO names or ids (default: every category present). ``batch_size``: images per
    forward pass (each unit is ``len(filters)`` images; at least one unit per pass). ``limit``: at
    most this many images. ``min_area``: skip masks covering less than this fraction of the image.
    Returns the JSON described in the module doc, plus ``"_examples"`` (tensors for
    :func:`plot_color_examples`; dropped by the CLI before writing).
    """
    from tqdm.auto import tqdm

    from modinv.analysis.metrics import summarize
    from modinv.runtime import amp_dtype, autocast

    filters = tuple(filters)
    bad = [f for f in filters if f not in FILTERS]
    if bad:
        raise ModinvError(f"unknown color filter(s) {bad}; valid: {', '.join(FILTERS)}")
    if len(filters) < 2 or len(set(filters)) != len(filters):
        raise ModinvError("the pairwise MSE needs at least 2 distinct filters")
    stages = list(stages or [s for s in model.stages if _reconstructs(chain, s)])
    if not stages:
        raise ModinvError(f"the inverse chain reconstructs no stage of {model.name!r}")
    chosen = resolve_categories(source, categories)
    device = model.device
    dtype = amp_dtype(device, amp)
    per_pass = max(1, batch_size // len(filters))
    counts = {"images": 0, "unreadable": 0, "small_masks": 0, "images_without_units": 0}
    units: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    chain.eval()

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
        per_category[cname] = {key: summarize([u[key] for u in mine]) for key in keys}
    return {
        "analysis": "color",
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "label": model.name,
        "filters": list(filters),
        "masked_filters": [f for f in filters if f not in WHOLE_IMAGE_FILTERS],
        "whole_image_filters": [f for f in filters if f in WHOLE_IMAGE_FILTERS],
        "stages": stages,
        "pairwise_mse": {key: summarize([u[key] for u in units]) for key in keys},
        "per_category": per_category,
        "units": units,
        "n_units": len(units),
        "n_images": counts["images"],
        "skipped": {k: v for k, v in counts.items() if k != "images"},
        "categories": {str(k): v for k, v in chosen.items()} if chosen else "all present",
        "pixel_space": "[0, 1]",
        "ci": CI_METHOD,
        "grayscale": GRAYSCALE_DEFINITION,
        "examples": [{k: e[k] for k in ("image", "category", "filter")} for e in examples],
        "_examples": examples,
    }


def _reconstructs(chain, stage: str) -> bool:
    try:
        chain.path(stage)
    except ModinvError:
        return False
    return True


def task_of(model) -> str:
    """"detection" for DETR models (COCO box AP), else "classification" (top-1)."""
    return "detection" if str(model.name).startswith("detr") else "classification"


def color_robustness(
    model,
    source,
    filters: Sequence[str] = FILTERS,
    batch_size: int = 8,
    limit: int | None = None,
    task: str = "auto",
) -> dict[str, Any]:
    """The task metric without a filter ("none") and with each filter applied to the whole image.

    ``task``: "detection" (COCO box AP with :func:`modinv.analysis.task.detection_ap`; ``source``
    a COCO source), "classification" (top-1 with :func:`modinv.analysis.task.classification_top1`;
    ``source`` labelled, e.g. ImageNet folders) or "auto" (:func:`task_of`). Returns
    ``{"task", "metric", "scores": {"none"|filter: value}, "details": {"none"|filter: result}}``.
    """
    from modinv.analysis import task as tasks

    task = task_of(model) if task == "auto" else task
    if task == "detection":
        fn, metric = tasks.detection_ap, "AP"
    elif task == "classification":
        if getattr(source, "kind", None) == "coco":
            raise ModinvError(
                f"top-1 accuracy of {model.name!r} needs class-labelled images (e.g. --robustness-data "
                "imagenet:ROOT), not a COCO source"
            )
        fn, metric = tasks.classification_top1, "top1"
    else:
        raise ModinvError(f"unknown task {task!r}; valid: auto, detection, classification")
    scores: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    for name in ("none",) + tuple(filters):
        transform = None if name == "none" else image_filter(name)
        result = fn(model, source, batch_size, transform=transform, limit=limit)
        if metric not in result:
            raise ModinvError(f"the {task} evaluation returned no {metric!r} (keys: {', '.join(result)})")
        value = result[metric]  # None where COCO leaves it undefined (no objects)
        scores[name] = None if value is None else float(value)
        details[name] = _jsonable(result)
    return {"task": task, "metric": metric, "model": model.name, "scores": scores, "details": details}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist() if obj.numel() != 1 else obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# -- figures -------------------------------------------------------------------------------------------

def plot_color_examples(examples: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Fig. 6: one row per example: original, perturbed input, reconstruction from every stage."""
    from modinv.figures import image_grid

    if not examples:
        raise ModinvError("no examples to plot")
    stages = list(examples[0]["reconstructions"])
    rows = [[e["original"], e["perturbed"]] + [e["reconstructions"][s] for s in stages] for e in examples]
    row_titles = [f"{e['category']}: {LABELS.get(e['filter'], e['filter'])}" for e in examples]
    return image_grid(rows, path, column_titles=["original", "perturbed input"] + [f"from {s}" for s in stages],
                      row_titles=row_titles, title=title)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pairwise(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Fig. 7 left: average pairwise MSE at the input and every stage, a line with a shaded 95% CI
    per model. ``results``: ``{label: color-json}`` (needs ``"pairwise_mse"``)."""
    plt = _plt()
    if not results:
        raise ModinvError("no results to plot")
    order: list[str] = [INPUT]
    for entry in results.values():
        previous = INPUT
        for key in entry["pairwise_mse"]:
            if key not in order:
                order.insert(order.index(previous) + 1 if previous in order else len(order), key)
            previous = key
    fig, ax = plt.subplots(figsize=(1.0 * len(order) + 2.6, 3.6))
    for k, (label, entry) in enumerate(results.items()):
        keys = [key for key in order if key in entry["pairwise_mse"]]
        xs = [order.index(key) for key in keys]
        ys = [float(entry["pairwise_mse"][key]["mse"]) for key in keys]
        lo = [_ci(entry["pairwise_mse"][key])[0] for key in keys]
        hi = [_ci(entry["pairwise_mse"][key])[1] for key in keys]
        color = f"C{k % 10}"
        ax.plot(xs, ys, marker="o", ms=5, color=color, label=label)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order)
    ax.set_xlabel("input / reconstruction from stage")
    ax.set_ylabel("avg. pairwise MSE between\nthe perturbed versions")
    ax.set_title("Color perturbations: pairwise MSE (95% CI)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _ci(summary: Mapping[str, Any]) -> tuple[float, float]:
    mse = float(summary["mse"])
    a, b = (float(v) for v in (summary.get("ci95") or [mse, mse]))
    return (mse, mse) if math.isnan(a) or math.isnan(b) else (a, b)


def plot_robustness(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Fig. 7 right: the task metric with no filter and with each whole-image filter, one panel per
    model. ``results``: ``{label: robustness-json}`` (needs ``"metric"`` and ``"scores"``)."""
    plt = _plt()
    if not results:
        raise ModinvError("no robustness results to plot")
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for k, (label, entry) in enumerate(results.items()):
        ax = axes[0][k]
        names = list(entry["scores"])
        raw = [entry["scores"][name] for name in names]
        values = [0.0 if v is None else float(v) for v in raw]
        colors = ["0.55" if name == "none" else _bar_color(name) for name in names]
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{float(v):.3g}" for v in raw], fontsize=7, padding=2)
        ax.margins(y=0.12)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([LABELS.get(name, name) for name in names], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(entry.get("metric", "score"))
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Task performance under full-image recoloring", fontsize=10)
    return _save(fig, path)


def _bar_color(name: str) -> str:
    return {"red": "tab:red", "green": "tab:green", "blue": "tab:blue", "shift120": "tab:purple",
            "shift240": "tab:orange", "grayscale": "0.3"}.get(name, "C0")


def _save(fig, path: str | Path) -> Path:
    from modinv.figures import save_figure

    fig.tight_layout()
    return save_figure(fig, path)


# -- CLI ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--categories", nargs="+", metavar="CAT",
                        help="COCO category names or ids whose masks get the hue filters (default: all present)")
    parser.add_argument("--filters", nargs="+", choices=FILTERS, default=list(FILTERS), metavar="FILTER",
                        help=f"filters to compare, at least 2 of: {', '.join(FILTERS)} (default: all six)")
    parser.add_argument("--examples", type=int, default=6, help="example rows of color.png (default: 6)")
    parser.add_argument("--min-area", type=float, default=0.0,
                        help="skip object masks smaller than this fraction of the image (default: 0)")
    parser.add_argument("--robustness", action="store_true",
                        help="also measure the task metric (DETR: COCO box AP; classifiers: top-1) without a "
                             "filter and under full-image recoloring with each filter (on at most --limit images)")
    parser.add_argument("--robustness-data", metavar="SPEC",
                        help="image source for --robustness (default: --data; ViT needs e.g. imagenet:ROOT)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="FILE.json",
                        help="color.json files of other runs (e.g. another model) to plot side by side")
    parser.add_argument("--label", help="legend label of this run (default: the model name)")


def _load_compare(files: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for file in files:
        path = Path(file)
        data = read_compare_file(path)
        if not isinstance(data, Mapping) or not isinstance(data.get("pairwise_mse"), Mapping):
            raise ModinvError(f"{str(path)!r} is not a color.json of `modinv analyze color` (no 'pairwise_mse')")
        label = str(data.get("label") or data.get("model") or path.stem)
        while label in out:
            label += "'"
        out[label] = {k: data.get(k) for k in ("label", "model", "weights", "pairwise_mse", "robustness", "n_units")}
    return out


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    from modinv.cli.common import model_from_args, writable_dir
    from modinv.data import open_source
    from modinv.inverse.chain import InverseChain

    out = writable_dir(args.out)
    compare = _load_compare(args.compare)
    if len(args.inverse) != 1:
        raise ModinvError(f"the color analysis takes one inverse chain, got {len(args.inverse)}")
    if args.examples < 0:
        raise ModinvError("--examples must be 0 or more")
    model = model_from_args(args)
    chain = InverseChain.load(args.inverse[0], model, map_location=model.device)
    source = open_source(args.data, size=tuple(model.input_size))
    rsource = None
    if args.robustness:  # open and check it before the long part
        spec = args.robustness_data or args.data
        rsource = source if spec == args.data else open_source(spec, size=tuple(model.input_size))
        if task_of(model) == "classification" and getattr(rsource, "kind", None) == "coco":
            raise ModinvError(
                f"--robustness measures top-1 accuracy for {model.name!r}, which needs class-labelled images: "
                "pass --robustness-data imagenet:ROOT"
            )
    result = color_analysis(model, chain, source, categories=args.categories, filters=args.filters,
                            batch_size=args.batch, limit=args.limit, min_area=args.min_area,
                            n_examples=args.examples, amp=args.amp)
    label = args.label or model.name
    result["label"] = label
    result["inverse"] = str(args.inverse[0])
    result["data"] = args.data
    examples = result.pop("_examples")
    figures = {}
    if examples:
        figures["examples"] = plot_color_examples(
            examples, out / "color.png", title=f"{label}: color perturbations and reconstructions").name
    robustness = None
    if rsource is not None:
        robustness = color_robustness(model, rsource, filters=args.filters, batch_size=args.batch, limit=args.limit)
        robustness["data"] = args.robustness_data or args.data
    result["robustness"] = robustness
    pair = {label: result} | {k: v for k, v in compare.items() if k != label}
    figures["pairwise"] = plot_pairwise(pair, out / "color_pairwise.png").name
    rob = {k: v["robustness"] for k, v in pair.items() if v.get("robustness")}
    if rob:
        figures["robustness"] = plot_robustness(rob, out / "color_robustness.png").name
    if not examples:  # color.png is always written: without example rows it shows the pairwise plot
        figures["examples"] = plot_pairwise(pair, out / "color.png").name
    result["compare"] = compare
    result["figures"] = figures
    (out / "color.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{label}: average pairwise MSE of {len(args.filters)} filters over {result['n_units']} units "
          f"(images × categories) from {result['n_images']} images")
    for key, r in result["pairwise_mse"].items():
        print(f"  {key:<8} {r['mse']:.5f}  95% CI [{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}]")
    if robustness:
        print(f"  {robustness['metric']}: " + ", ".join(f"{k} {v:.4f}" for k, v in robustness["scores"].items()))
    print(f"wrote {', '.join(str(out / f) for f in figures.values())} and {out / 'color.json'}")
    return result
