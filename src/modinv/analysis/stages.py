"""Per-stage reconstruction quality with confidence intervals and the mean-image baseline, side by side (Fig. 4 left).

    result = stage_errors(model, chain, source)                     # a StageErrors
    result = stage_errors(model, {"DETR": chain}, source, compare={"ViT": vit_entry})
    stage_errors_figure(result, "stages.png")

Every entry is the output of :func:`modinv.analysis.evaluate.evaluate_chain`: per stage and metric
(MSE in [0, 1] pixel space, PSNR in dB, SSIM, LPIPS where its weights are available) the mean over
the images with a 95% confidence interval that stays inside the metric's range (a BCa bootstrap,
:mod:`modinv.metrics.bounded`), and the same for the mean-image baseline (each image against the
data set's mean image). The figure has one panel per metric; in each, one line with error bars per
model over the stages (in processing order, the union of all models' stages) and, at the right, its
"mean" baseline point. An entry saved before the other metrics existed (no ``"metrics"``) shows in
the MSE panel only.

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

from modinv.analysis.common import AnalysisResult, precision
from modinv.analysis.evaluate import evaluate_chain
from modinv.errors import ModinvError
from modinv.fileio import read_json
from modinv.figures import save_figure
from modinv.inverse.chain import InverseChain
from modinv.metrics import CI_METHOD
from modinv.models.base import StagedModel

BASELINE = "mean"

__all__ = ["StageErrors", "load_results", "stage_errors", "stage_errors_figure", "stage_order", "unique_label"]


@dataclass
class StageErrors(AnalysisResult):
    """Per-stage errors of one or more runs: ``results`` ``{label: evaluate-json}`` in legend order."""

    results: dict[str, dict[str, Any]]
    stage_order: list[str]
    order: list[str] = field(default_factory=list)
    analysis: str = "stages"
    pixel_space: str = "[0, 1]"
    ci: str = CI_METHOD
    precision: str | None = None  # of the entries computed in this run (each entry records its own)

    @classmethod
    def from_entries(cls, results: Mapping[str, Mapping[str, Any]]) -> "StageErrors":
        """The result of already computed entries (e.g. read by :func:`load_results`), checked."""
        if not results:
            raise ModinvError("no results to compare")
        for label, entry in results.items():
            _check_entry(label, entry)
        entries = {str(k): dict(v) for k, v in results.items()}
        return cls(results=entries, stage_order=stage_order(entries), order=list(entries))


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
) -> StageErrors:
    """Per-stage image MSE (95% CI) and the mean-image baseline of each chain on ``source``.

    ``chains``: one :class:`~modinv.inverse.chain.InverseChain` (labelled ``label``, default the
    model's name) or ``{label: chain}``. ``compare``: entries computed earlier (``{label:
    evaluate-json}``) shown after them. Each entry is :func:`~modinv.analysis.evaluate.evaluate_chain`'s
    result plus ``"label"``.
    """
    if not isinstance(chains, Mapping):
        chains = {label or model.name: chains}
    results: dict[str, dict[str, Any]] = {}
    for name, chain in chains.items():
        entry = evaluate_chain(model, chain, source, stages=list(stages) if stages else None,
                               batch_size=batch_size, limit=limit, amp=amp, progress=progress)
        results[unique_label(name, results)] = entry | {"label": name}
    for name, entry in (compare or {}).items():
        results[unique_label(name, results)] = dict(entry)
    result = StageErrors.from_entries(results)
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


def stage_errors_figure(result: StageErrors, path: str | Path, title: str | None = None) -> Path:
    """Save Fig. 4 (left): per-stage MSE with 95% CI error bars per run, and each run's mean-image
    baseline at the right ("mean")."""
    import matplotlib.pyplot as plt  # after modinv.figures, which selects the file-only backend

    results = result.results
    stages = result.stage_order
    ticks = stages + [BASELINE]
    n = len(results)
    width = 0.5 / max(n, 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(ticks) + 2.6, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for k, (label, entry) in enumerate(results.items()):
        offset = (k - (n - 1) / 2) * width
        color = colors[k % len(colors)]
        xs, ys, lo, hi = [], [], [], []
        for stage, summary in entry["stages"].items():
            mse, (a, b) = _value(summary)
            xs.append(stages.index(stage) + offset)
            ys.append(mse)
            lo.append(mse - a)
            hi.append(b - mse)
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=5, capsize=3, color=color, label=label)
        mse, (a, b) = _value(entry["mean_image_baseline"])
        ax.errorbar([len(stages) + offset], [mse], yerr=[[mse - a], [b - mse]], marker="s", ms=5, capsize=3,
                    color=color, linestyle="none")
    ax.axvline(len(stages) - 0.5, color="0.8", linewidth=0.8)
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks)
    ax.set_xlim(-0.6, len(ticks) - 0.4)
    ax.set_xlabel("processing stage (reconstruction from)")
    ax.set_ylabel("image MSE ([0, 1] pixels)")
    ax.set_title(title or "Reconstruction error per stage (95% CI)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _value(summary: Mapping[str, Any]) -> tuple[float, tuple[float, float]]:
    mse = float(summary["mse"])
    ci = summary.get("ci95") or [mse, mse]
    a, b = (float(v) for v in ci)
    if math.isnan(a) or math.isnan(b):
        a = b = mse
    return mse, (a, b)


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


def unique_label(label: str, taken: Mapping[str, Any]) -> str:
    """``label``, or ``"label (2)"``, ``"label (3)"``, ... when ``taken`` has it already."""
    if label not in taken:
        return label
    k = 2
    while f"{label} ({k})" in taken:
        k += 1
    return f"{label} ({k})"
