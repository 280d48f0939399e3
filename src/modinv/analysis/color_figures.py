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
from modinv.figures import image_grid, plt, save_figure

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
        ax.plot(xs, [float(s["mse"]) for s in summaries], marker="o", ms=5, color=color, label=label)
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
    return save_figure(fig, path)


def _ci(summary: Mapping[str, Any]) -> tuple[float, float]:
    mse = float(summary["mse"])
    a, b = (math.nan if v is None else float(v) for v in (summary.get("ci95") or [mse, mse]))
    return (mse, mse) if math.isnan(a) or math.isnan(b) else (a, b)


def robustness_figure(result, path: str | Path, compare: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Fig. 7 right: the task metric with no filter and with each whole-image filter, one panel per
    run that measured it (this result's ``robustness`` and each of ``compare``'s)."""
    entries = {label: e["robustness"] for label, e in runs(result, compare).items() if e.get("robustness")}
    if not entries:
        raise ModinvError("no robustness results to plot (run with --robustness)")
    n = len(entries)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (label, entry) in zip(axes[0], entries.items()):
        names = list(entry["scores"])
        raw = [entry["scores"][name] for name in names]
        bars = ax.bar(range(len(names)), [0.0 if v is None else float(v) for v in raw],
                      color=[BAR_COLORS.get(name, "C0") for name in names])
        ax.bar_label(bars, labels=["n/a" if v is None else f"{float(v):.3g}" for v in raw], fontsize=7, padding=2)
        ax.margins(y=0.12)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([LABELS.get(name, name) for name in names], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(entry.get("metric", "score"))
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Task performance under full-image recoloring", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
