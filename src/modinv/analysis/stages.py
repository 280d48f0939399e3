"""Per-stage reconstruction quality with confidence intervals and the mean-image baseline, side by side (Fig. 4 left).

    result = stage_errors(model, chain, source)                     # a StageErrors
    result = stage_errors(model, {"DETR": chain}, source, compare={"ViT": vit_entry})
    stage_errors_figure(result, "stages.png")

Every entry is the output of :func:`modinv.analysis.evaluate.evaluate_chain`: per stage and metric
(MSE in [0, 1] pixel space, PSNR in dB, SSIM, LPIPS where its weights are available) the mean over
the images with a 95% confidence interval that stays inside the metric's range (a BCa bootstrap,
:mod:`modinv.metrics.bounded`), and the same for the mean-image baseline (each image against the
data set's mean image). The figure has one panel per metric and model (models with the very same
stages share theirs; stages are matched by model and name), wrapping at six panels a row; in each,
one line with 95% CI error bars per run over the model's stages in processing order and, at the
right, its mean-image baseline point; the legend gives each run's n. ``metrics`` chooses the
panels, also for compared files that hold more. An entry saved before the other metrics existed
(no ``"metrics"``) shows in the MSE panel only.

CLI: ``modinv analyze stages --model M --inverse CHAIN [CHAIN ...] --data SPEC --out DIR
[--metrics mse,psnr,ssim,lpips] [--lpips-weights FILE] [--compare FILE.json ...]`` writes
``DIR/stages.png`` and ``DIR/stages.json``. ``--compare`` adds entries saved earlier by ``modinv
evaluate`` or by this analysis (e.g. another model's).

``stages.json`` (:meth:`StageErrors.to_json` plus ``figure``): ``{"analysis": "stages", "results":
{label: evaluate-json}, "order": [labels], "stage_order": [stages], "metrics": [panel metrics],
"pixel_space": "[0, 1]", "ci": {"confidence", "over", "methods": {method: sentence}}, "precision",
"figure": "stages.png"}``; each evaluate-json has ``"stages"`` (``{stage: MSE summary}``),
``"mean_image_baseline"`` (same keys), ``"metrics"`` (``{metric: {"stages", "mean_image_baseline"}}``),
``"metric_info"``, ``"not_computed"`` (``{metric: why}``), ``"n_images"``, ``"precision"``
(float32 unless ``amp`` opts in to bf16 autocast), ``"model"``, ``"weights"``, ``"label"`` and,
from the CLI, ``"inverse"`` and ``"data"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from modinv.analysis.common import AnalysisResult, interval_record, precision, unique_label
from modinv.analysis.evaluate import evaluate_chains
from modinv.errors import ModinvError
from modinv.fileio import read_json
from modinv.figures import panel_grid, save_figure
from modinv.inverse.chain import InverseChain
from modinv.metrics import DEFAULT_METRICS, METRICS, Lpips
from modinv.models.base import StagedModel

BASELINE = "mean"  # the baseline's key in the JSON
BASELINE_TICK = "mean image\n(baseline)"  # and its tick in the figure

__all__ = ["StageErrors", "entry_metrics", "load_results", "model_groups", "panel_metrics", "stage_errors",
           "stage_errors_figure", "stage_errors_plot", "stage_order"]


@dataclass
class StageErrors(AnalysisResult):
    """Per-stage errors of one or more runs: ``results`` ``{label: evaluate-json}`` in legend order."""

    results: dict[str, dict[str, Any]]
    stage_order: list[str]
    order: list[str] = field(default_factory=list)
    analysis: str = "stages"
    metrics: list[str] = field(default_factory=lambda: ["mse"])  # one figure panel each
    pixel_space: str = "[0, 1]"
    ci: dict[str, Any] = field(default_factory=dict)  # the interval methods the entries used
    precision: str | None = None  # of the entries computed in this run (each entry records its own)

    @classmethod
    def from_entries(cls, results: Mapping[str, Mapping[str, Any]]) -> "StageErrors":
        """The result of already computed entries (e.g. read by :func:`load_results`), checked."""
        if not results:
            raise ModinvError("no results to compare")
        for label, entry in results.items():
            _check_entry(label, entry)
        entries = {str(k): dict(v) for k, v in results.items()}
        return cls(results=entries, stage_order=stage_order(entries), order=list(entries),
                   metrics=panel_metrics(entries), ci=interval_record(entries))


def stage_errors(
    model: StagedModel,
    chains: InverseChain | Mapping[str, InverseChain],
    source,
    compare: Mapping[str, Mapping[str, Any]] | None = None,
    stages: Sequence[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    progress: bool = True,
    label: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    lpips: Lpips | None = None,
) -> StageErrors:
    """Per-stage image quality (``metrics``, each with a 95% CI) and the mean-image baseline of each
    chain on ``source``; LPIPS with an available ``lpips`` network only.

    ``chains``: one :class:`~modinv.inverse.chain.InverseChain` (labelled ``label``, default the
    model's name) or ``{label: chain}``. ``compare``: entries computed earlier (``{label:
    evaluate-json}``) shown after them. Each entry is :func:`~modinv.analysis.evaluate.evaluate_chain`'s
    result plus ``"label"``.
    """
    if not isinstance(chains, Mapping):
        chains = {label or model.name: chains}
    results: dict[str, dict[str, Any]] = {}
    entries = evaluate_chains(model, chains, source, stages=list(stages) if stages else None, batch_size=batch_size,
                              limit=limit, amp=amp, progress=progress, metrics=metrics, lpips=lpips) if chains else {}
    for name, entry in entries.items():
        results[unique_label(name, results)] = entry | {"label": name}
    for name, entry in (compare or {}).items():
        results[unique_label(name, results)] = dict(entry)
    result = StageErrors.from_entries(results)
    result.metrics = [m for m in result.metrics if m in metrics]  # compared files may hold others: not asked for
    result.precision = precision(model.device, amp)[1] if chains else None
    return result


def _check_entry(label: str, entry: Any) -> None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("stages"), Mapping) \
            or not isinstance(entry.get("mean_image_baseline"), Mapping):
        raise ModinvError(
            f"result {label!r} is not a per-stage evaluation (needs 'stages' and 'mean_image_baseline', "
            "as written by `modinv evaluate` or `modinv analyze stages`)"
        )


def stage_order(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The union of the results' stages, each model's stages kept in their processing order."""
    order: list[str] = []
    for entry in results.values():
        previous = None
        for stage in entry["stages"]:
            if stage not in order:
                # after the stage that precedes it in this model, else at the end
                order.insert(order.index(previous) + 1 if previous in order else len(order), stage)
            previous = stage
    return order


def entry_metrics(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{metric: {"stages": {stage: summary}, "mean_image_baseline": summary}}`` of one entry; an
    entry written before the other metrics existed (no ``"metrics"``) has its MSE only."""
    if isinstance(entry.get("metrics"), Mapping) and entry["metrics"]:
        return {str(k): v for k, v in entry["metrics"].items()}
    return {"mse": {"stages": entry["stages"], "mean_image_baseline": entry["mean_image_baseline"]}}


def panel_metrics(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The metrics the figure shows (one panel each): those of any entry, known ones in
    :data:`~modinv.metrics.DEFAULT_METRICS` order."""
    present = {name for entry in results.values() for name in entry_metrics(entry)}
    return [m for m in DEFAULT_METRICS if m in present] + sorted(present - set(DEFAULT_METRICS))


def _axis_label(name: str) -> str:
    info = METRICS.get(name)
    if info is None:
        return name
    unit = f" ({info.unit})" if info.unit else " ([0, 1] pixels)" if name == "mse" else ""
    return f"{name.upper()}{unit}, {'higher' if info.higher_is_better else 'lower'} is better"


def model_groups(result: StageErrors) -> dict[str, list[str]]:
    """``{panel title: [labels]}``: the entries of each model (by its ``"model"``, else its label),
    stages matched by model and name; models with the very same stages (names and order, e.g. the
    paper's DETR and ViT ``bb``, ``enc``) share their panels, others get panels of their own (a
    Swin ``s4`` is never drawn at a MobileNet ``s4``). One sentence when two entries of one model
    order its stages differently (they cannot share an axis)."""
    by_model: dict[str, list[str]] = {}
    for label, entry in result.results.items():
        by_model.setdefault(str(entry.get("model") or label), []).append(label)
    shared: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}  # stages -> (models, labels)
    for model, labels in by_model.items():
        orders = [list(result.results[label]["stages"]) for label in labels]
        for order in orders[1:]:
            common = [s for s in orders[0] if s in order]
            if common != [s for s in order if s in orders[0]]:
                raise ModinvError(f"the results of {model!r} order its stages differently ({', '.join(orders[0])} vs "
                                  f"{', '.join(order)}); they cannot be drawn on one axis")
        key = tuple(stage_order({label: result.results[label] for label in labels}))
        models, members = shared.setdefault(key, ([], []))
        models.append(model)
        members.extend(labels)
    return {", ".join(models): labels for models, labels in shared.values()}


def _legend_label(label: str, entry: Mapping[str, Any]) -> str:
    n = entry.get("n_images")
    return f"{label} (n = {n})" if n is not None else label


def stage_errors_plot(result: StageErrors, title: str | None = None):
    """The matplotlib figure of :func:`stage_errors_figure`: one panel per model and metric of
    ``result.metrics`` (a model's stages on its own axis: stages of different models are matched by
    model and name, never by name alone), wrapping onto further rows (:func:`modinv.figures.panel_grid`)."""
    import matplotlib.pyplot as plt  # after modinv.figures, which selects the file-only backend

    groups = model_groups(result)
    metrics = result.metrics or ["mse"]
    longest = max(len(stage_order({k: result.results[k] for k in labels})) for labels in groups.values())
    fig, axes = panel_grid(len(groups) * len(metrics), (0.6 * (longest + 1) + 1.9, 3.3),
                           row_length=len(metrics))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    color_of = {label: colors[k % len(colors)] for k, label in enumerate(result.results)}
    panels = iter(axes)
    for model, labels in groups.items():
        entries = {label: result.results[label] for label in labels}
        for name in metrics:
            ax = next(panels)
            _draw_panel(ax, entries, stage_order(entries), name, color_of)
            if len(groups) > 1:
                ax.set_title(model, fontsize=9)
    handles = [plt.Line2D([], [], color=color_of[label], marker="o", label=_legend_label(label, entry))
               for label, entry in result.results.items()]
    handles.append(plt.Line2D([], [], color="0.4", marker="s", linestyle="none",
                              label="mean image: each image vs the mean image of the set (baseline)"))
    fig.suptitle(title or "Reconstruction quality per stage (mean, 95% CI error bars)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_figheight()),
               ncol=min(len(handles), 3), fontsize=7, frameon=False)
    fig.subplots_adjust(top=1 - (0.55 + 0.16 * math.ceil(len(handles) / 3)) / fig.get_figheight())
    return fig


def _draw_panel(ax, entries: Mapping[str, Mapping[str, Any]], stages: list[str], name: str,
                color_of: Mapping[str, Any]) -> None:
    """One metric of one model's entries: per stage mean and 95% CI, the baseline at the right."""
    ticks = stages + [BASELINE_TICK]
    width = 0.5 / max(len(entries), 1)
    for k, (label, entry) in enumerate(entries.items()):
        data = entry_metrics(entry).get(name)
        if data is None:
            continue
        offset, color = (k - (len(entries) - 1) / 2) * width, color_of[label]
        points = [(stages.index(s) + offset, _value(r)) for s, r in data["stages"].items() if s in stages]
        _error_bars(ax, points, color, marker="o")
        _error_bars(ax, [(len(stages) + offset, _value(data["mean_image_baseline"]))], color, marker="s",
                    linestyle="none")
    ax.axvline(len(stages) - 0.5, color="0.8", linewidth=0.8)
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, fontsize=8, rotation=45 if len(ticks) > 8 else 0)
    ax.set_xlim(-0.6, len(ticks) - 0.4)
    ax.set_xlabel("reconstructed from stage", fontsize=8)
    ax.set_ylabel(_axis_label(name), fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _caption(result: StageErrors) -> dict[str, Any]:
    """Caption parts the entries share (model, weights, n)."""
    parts: dict[str, Any] = {}
    for key, field_name in (("model", "model"), ("weights", "weights"), ("n", "n_images")):
        values = {str(e.get(field_name)) for e in result.results.values() if e.get(field_name) is not None}
        if len(values) == 1:
            value = values.pop()
            parts[key] = int(value) if key == "n" else value
    return parts


def stage_errors_figure(result: StageErrors, path: str | Path, title: str | None = None) -> Path:
    """Save Fig. 4 (left), one panel per model and metric: the per-stage values with 95% CI error
    bars per run, and each run's mean-image baseline at the right."""
    return save_figure(stage_errors_plot(result, title), path, caption=_caption(result))


def _error_bars(ax, points: list[tuple[float, tuple[float, float, float] | None]], color, **style: Any) -> None:
    """Points ``(x, (mean, lo, hi))`` with asymmetric error bars; points without a finite mean
    (an infinite PSNR) are left out."""
    kept = [(x, v) for x, v in points if v is not None]
    if not kept:
        return
    xs = [x for x, _ in kept]
    ys = [v[0] for _, v in kept]
    yerr = [[v[0] - v[1] for _, v in kept], [v[2] - v[0] for _, v in kept]]
    ax.errorbar(xs, ys, yerr=yerr, ms=5, capsize=3, color=color, **style)


def _value(summary: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)`` of a summary (the interval collapsed to the mean where it is missing);
    None where the mean is missing or not finite."""
    mean = summary.get("mean", summary.get("mse"))
    if mean is None or not math.isfinite(float(mean)):
        return None
    mean = float(mean)
    lo, hi = (float(v) if v is not None else math.nan for v in (summary.get("ci95") or [mean, mean]))
    if math.isnan(lo) or math.isnan(hi):
        lo = hi = mean
    return mean, lo, hi


def load_results(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{label: evaluate-json}`` from a file of ``modinv evaluate`` (one entry, labelled by its
    ``"label"``, else its model name, else the file name) or of this analysis (all its entries)."""
    path = Path(path)
    data = read_json(path, "results file")
    if isinstance(data, Mapping) and isinstance(data.get("results"), Mapping):
        out = {str(k): dict(v) for k, v in data["results"].items()}
    else:
        label = str((data.get("label") or data.get("model") or path.stem) if isinstance(data, Mapping) else path.stem)
        out = {label: data}
    for label, entry in out.items():
        try:
            _check_entry(label, entry)
        except ModinvError as exc:
            raise ModinvError(f"{str(path)!r}: {exc}") from None
    return out

