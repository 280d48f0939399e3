"""The figures of the color analysis: examples (Fig. 6), pairwise MSE per stage and task robustness (Fig. 7).

Each takes a :class:`~modinv.analysis.color.ColorResult` and, for the side-by-side plots,
``compare``: other runs' ``color.json`` contents by label (e.g. another model's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from modinv.analysis.color_filters import LABELS
from modinv.analysis.stages import stage_order
from modinv.errors import ModinvError
from modinv.figures import image_grid, panel_grid, plt, save_figure

INPUT = "input"
BAR_COLORS = {"red": "tab:red", "green": "tab:green", "blue": "tab:blue", "shift120": "tab:purple",
              "shift240": "tab:orange", "grayscale": "0.3", "none": "0.55"}


def color_figure(result, path: str | Path, title: str | None = None) -> Path:
    """Fig. 6: one row per example: original, perturbed input, reconstruction from every stage.
    A result without examples gets the pairwise-MSE plot instead (the file is always written)."""
    examples = list(result.figure_data or ())
    if not examples:
        return pairwise_figure(result, path)
    stages = list(examples[0]["reconstructions"])
    rows = [[e["original"], e["perturbed"]] + [e["reconstructions"][s] for s in stages] for e in examples]
    row_titles = [f"{e['category']}: {LABELS.get(e['filter'], e['filter'])}" for e in examples]
    return image_grid(rows, path, column_titles=["original", "perturbed input"] + [f"from {s}" for s in stages],
                      row_titles=row_titles,
                      title=title or f"{result.label}: color perturbations and reconstructions")


def runs(result, compare: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``{label: color-json}``: this result first, then the compared runs (a label taken twice keeps this run)."""
    return {result.label: result.to_json()} | {k: dict(v) for k, v in (compare or {}).items() if k != result.label}


def pairwise_figure(result, path: str | Path, compare: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Fig. 7 left: average pairwise MSE at the input and every stage, a line with a shaded 95% CI
    per run (this result and each of ``compare``, which need ``"pairwise_mse"``)."""
    entries = runs(result, compare)
    order = stage_order({label: {"stages": [INPUT, *e["pairwise_mse"]]} for label, e in entries.items()})
    fig, ax = plt.subplots(figsize=(1.0 * len(order) + 2.6, 3.6))
    for k, (label, entry) in enumerate(entries.items()):
        keys = [key for key in order if key in entry["pairwise_mse"]]
        summaries = [entry["pairwise_mse"][key] for key in keys]
        xs = [order.index(key) for key in keys]
        color = f"C{k % 10}"
        n = entry.get("n_units")
        ax.plot(xs, [float(s["mse"]) for s in summaries], marker="o", ms=5, color=color,
                label=f"{label} (n = {n} image × category units)" if n is not None else label)
        bounds = [_ci(s) for s in summaries]
        ax.fill_between(xs, [b[0] for b in bounds], [b[1] for b in bounds], color=color, alpha=0.2, linewidth=0)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order)
    ax.set_xlabel("input / reconstruction from stage")
    ax.set_ylabel("avg. pairwise MSE between\nthe perturbed versions")
    ax.set_title("Color perturbations: pairwise MSE (95% CI)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, caption={"model": getattr(result, "model", None),
                                           "note": "shaded: 95% confidence interval over the units"})


def _ci(summary: Mapping[str, Any]) -> tuple[float, float]:
    mse = float(summary["mse"])
    a, b = (math.nan if v is None else float(v) for v in (summary.get("ci95") or [mse, mse]))
    return (mse, mse) if math.isnan(a) or math.isnan(b) else (a, b)


# the task metrics' names in figures
METRIC_WORDS = {"top1": "top-1 accuracy", "AP": "COCO box AP (IoU 0.50:0.95)"}


def task_interval(metric: str, detail: Mapping[str, Any]) -> tuple[float, float] | None:
    """The 95% interval of one task score: Wilson's for top-1 (a proportion of ``n`` images);
    None for COCO AP, which is one number over the whole set (no per-image spread)."""
    if metric != "top1" or not detail.get("n"):
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(detail["correct"]), int(detail["n"])).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _images(detail: Mapping[str, Any]) -> int | None:
    n = detail.get("n", detail.get("n_images"))
    return int(n) if n is not None else None


def robustness_figure(result, path: str | Path, compare: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Fig. 7 right: the task metric with no filter and with each whole-image filter, one panel per
    run that measured it (this result's ``robustness`` and each of ``compare``'s): top-1 with its
    95% Wilson interval, COCO AP as the one number it is; each panel names its n."""
    entries = {label: e["robustness"] for label, e in runs(result, compare).items() if e.get("robustness")}
    if not entries:
        raise ModinvError("no robustness results to plot (run with --robustness)")
    fig, axes = panel_grid(len(entries), (5.6, 3.8))
    for ax, (label, entry) in zip(axes, entries.items()):
        _robustness_panel(ax, label, entry)
    fig.suptitle("Task performance under full-image recoloring", fontsize=10)
    fig.tight_layout()
    metrics = {e.get("metric") for e in entries.values()}
    note = ("error bars: 95% Wilson interval over the images" if metrics == {"top1"} else
            "COCO AP is one number over the whole set: no interval" if metrics == {"AP"} else
            "top-1: 95% Wilson interval; COCO AP: one number over the set, no interval")
    return save_figure(fig, path, caption={"model": getattr(result, "model", None), "note": note})


def _robustness_panel(ax, label: str, entry: Mapping[str, Any]) -> None:
    names = list(entry["scores"])
    metric = entry.get("metric", "score")
    raw = [entry["scores"][name] for name in names]
    heights = [0.0 if v is None else float(v) for v in raw]
    details = entry.get("details") or {}
    intervals = [task_interval(metric, details.get(name, {})) for name in names]
    errors = None
    if all(i is not None for i in intervals):
        errors = [[h - i[0] for h, i in zip(heights, intervals)], [i[1] - h for h, i in zip(heights, intervals)]]
    bars = ax.bar(range(len(names)), heights, yerr=errors, capsize=3,
                  color=[BAR_COLORS.get(name, "C0") for name in names])
    ax.bar_label(bars, labels=["n/a" if v is None else f"{float(v):.3g}" for v in raw], fontsize=7, padding=2)
    ax.margins(y=0.15)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([LABELS.get(name, name) for name in names], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(METRIC_WORDS.get(metric, metric), fontsize=8)
    n = _images(details.get("none", {}))
    ax.set_title(f"{label}" + (f" (n = {n} images)" if n is not None else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
