"""Per-stage image reconstruction quality over a data set (MSE, PSNR, SSIM, LPIPS), against the
mean-image baseline, with 95% confidence intervals that stay inside each metric's range."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from modinv.analysis.common import AnalysisRun, RunOptions, chain_stages, interval_record, limited_batches
from modinv.errors import ModinvError
from modinv.fileio import finite_or_null
from modinv.inverse.chain import InverseChain
from modinv.metrics import (
    DEFAULT_METRICS, METRICS, Lpips, RunningMean, format_ci, image_metrics, not_computed, parse_metrics,
    summarize_metric,
)
from modinv.metrics.image import SSIM_SETTINGS
from modinv.models.base import StagedModel

# digits printed per metric
DIGITS = {"mse": 5, "psnr": 2, "ssim": 4, "lpips": 4}

__all__ = ["DIGITS", "Evaluation", "evaluate_chain", "evaluate_chains", "evaluation_lines", "mean_image",
           "metric_text"]


class Evaluation(dict):
    """The result of :func:`evaluate_chain`: typed attributes and ``to_json()`` like the analyses'
    results, and still the mapping it always was (``result["stages"]``, ``result["n_images"]``;
    callers may add keys, as the CLI adds ``"inverse"`` and ``"data"``)."""

    analysis = "evaluate"

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """``{stage: MSE summary}`` (``"mse"``/``"mean"``, ``"ci95"``, ``"n"``, ...)."""
        return self["stages"]

    @property
    def mean_image_baseline(self) -> dict[str, Any]:
        """The MSE summary of each image against the data set's mean image."""
        return self["mean_image_baseline"]

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{metric: {"stages": {stage: summary}, "mean_image_baseline": summary}}``."""
        return self["metrics"]

    @property
    def not_computed(self) -> dict[str, str]:
        """``{metric: why}`` for asked-for metrics that could not be computed."""
        return self["not_computed"]

    @property
    def n_images(self) -> int:
        return self["n_images"]

    @property
    def precision(self) -> str:
        return self["precision"]

    @property
    def model(self) -> str:
        return self["model"]

    @property
    def weights(self) -> str:
        return self["weights"]

    def mean(self, stage: str, metric: str = "mse") -> float | None:
        """The mean of ``metric`` over the images for the reconstruction from ``stage``."""
        if metric not in self["metrics"]:
            raise ModinvError(f"{metric} was not computed; computed: {', '.join(self['metrics'])}")
        if stage not in self["metrics"][metric]["stages"]:
            raise ModinvError(f"no stage {stage!r} in this evaluation; stages: {', '.join(self['stages'])}")
        return self["metrics"][metric]["stages"][stage]["mean"]

    def to_json(self) -> dict[str, Any]:
        """The numbers as strict-JSON values (``"analysis": "evaluate"`` first; non-finite as None)."""
        return finite_or_null({"analysis": self.analysis, **self})


def mean_image(source, batch_size: int = 16, limit: int | None = None) -> Tensor:
    """The data set's mean image (3×H×W), the paper's structureless reference."""
    running = RunningMean()
    for batch in limited_batches(source, batch_size, limit):
        running.add(batch["image"])
    if running.count == 0:
        raise ModinvError("the data yielded no usable images")
    return running.mean


def _too_small_for_ssim(images: Tensor) -> str | None:
    side = SSIM_SETTINGS["kernel_size"]
    h, w = images.shape[-2:]
    if min(h, w) < side:
        return f"the images ({h}×{w} pixels) are smaller than SSIM's {side}×{side} window"
    return None


def evaluate_chain(
    model: StagedModel,
    chain: InverseChain,
    source,
    stages: list[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    progress: bool = True,
    metrics: Sequence[str] = DEFAULT_METRICS,
    lpips: Lpips | None = None,
) -> Evaluation:
    """Image quality of the reconstruction from every stage: MSE, PSNR, SSIM and LPIPS (``metrics``;
    LPIPS only with an available ``lpips`` network, :func:`modinv.metrics.load_lpips`).

    Returns an :class:`Evaluation` (a mapping with typed attributes and ``to_json()``):
    ``{"stages": {stage: MSE summary}, "mean_image_baseline": MSE summary, "metrics":
    {metric: {"stages": {stage: summary}, "mean_image_baseline": summary}}, "metric_info",
    "not_computed": {metric: why}, "ci", "pixel_space": "[0, 1]", "n_images", "precision", "model",
    "weights"}``. A summary is :func:`~modinv.metrics.summarize_metric`'s (``"mean"``, ``"ci95"``
    inside the metric's range, ``"n"``, ``"std"``, ``"ci_method"``, ``"range"``, ``"n_infinite"``);
    the MSE ones also carry ``"mse"`` (the mean). ``"stages"``/``"mean_image_baseline"`` are always
    the MSE, whatever ``metrics`` selects, so that readers of per-stage MSE keep working. The
    baseline scores each image against the data set's mean image. ``amp="off"`` (default):
    float32; "bf16"/"auto" opt in to bf16 autocast (:func:`modinv.analysis.common.precision`).
    """
    return evaluate_chains(model, {"chain": chain}, source, stages, batch_size, limit, amp, progress, metrics,
                           lpips)["chain"]


@torch.no_grad()
def evaluate_chains(
    model: StagedModel,
    chains: Mapping[str, InverseChain],
    source,
    stages: list[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    progress: bool = True,
    metrics: Sequence[str] = DEFAULT_METRICS,
    lpips: Lpips | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_chain` for several chains of one model at once, ``{label: result}``: one pass
    over the data for the mean image, then one frozen forward per batch feeding every chain, and the
    baseline scored once (it is the same for all)."""
    wanted = parse_metrics(metrics)
    names = tuple(m for m in METRICS if m in wanted or m == "mse")  # MSE always: "stages" is the MSE
    skipped = not_computed(names, lpips)
    chain_stage_lists = {label: list(stages or chain_stages(model, chain)) for label, chain in chains.items()}
    run = AnalysisRun(model, "evaluate", RunOptions(batch_size, limit, amp, progress=progress))
    reference = mean_image(source, batch_size, limit).to(run.device)
    # values[label][stage][metric]; label None / stage None: the mean-image baseline
    values: dict[str | None, dict[str | None, dict[str, list[Tensor]]]] = {
        label: {s: {m: [] for m in names} for s in chain_stage_lists[label]} for label in chains
    } | {None: {None: {m: [] for m in names}}}
    n_images = 0
    for batch in run.batches(source):
        images = batch["image"]
        if "ssim" in names and "ssim" not in skipped and (why := _too_small_for_ssim(images)):
            skipped["ssim"] = why
        computed = [m for m in names if m not in skipped]
        with run.autocast():
            trace = model.trace(images)
        recons: list[tuple[str | None, str | None, Tensor]] = [(None, None, reference.expand_as(images).contiguous())]
        for label, chain in chains.items():
            for stage in chain_stage_lists[label]:
                with run.autocast():
                    recons.append((label, stage, chain.reconstruct(trace, stage)))
        for label, stage, recon in recons:
            for name, v in image_metrics(recon.float(), images.float(), computed, lpips).items():
                values[label][stage][name].append(v)
        n_images += images.shape[0]
    baseline = {m: summarize_metric(m, torch.cat(values[None][None][m])) for m in names if m not in skipped}
    return {label: _result(model, {m: {"stages": {s: summarize_metric(m, torch.cat(values[label][s][m]))
                                                  for s in chain_stage_lists[label]},
                                       "mean_image_baseline": baseline[m]} for m in baseline},
                           wanted, skipped, n_images, run.precision)
            for label in chains}


def psnr_both_ways(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per stage (and ``"mean_image_baseline"``) the PSNR of the mean MSE, 10·log10(1 / mean MSE),
    beside the mean of per-image PSNRs (where PSNR was computed): on real photos the first is about
    1 dB lower, since the log is concave. dB, data range 1; None for a zero MSE or no PSNR."""
    mse, psnr = summaries["mse"], summaries.get("psnr")

    def of_mse(summary: Mapping[str, Any]) -> float | None:
        return 10.0 * math.log10(1.0 / summary["mean"]) if summary["mean"] > 0 else None

    def mean_psnr(stage: str | None) -> float | None:
        if psnr is None:
            return None
        value = (psnr["stages"][stage] if stage else psnr["mean_image_baseline"])["mean"]
        return float(value) if math.isfinite(value) else None

    labels = [*mse["stages"], None]
    return {
        "psnr_of_mean_mse_db": {s or "mean_image_baseline": of_mse(mse["stages"][s] if s else mse["mean_image_baseline"])
                                for s in labels},
        "mean_of_per_image_psnr_db": {s or "mean_image_baseline": mean_psnr(s) for s in labels},
    }


def _result(model: StagedModel, summaries: dict[str, dict[str, Any]], wanted: Sequence[str],
            skipped: Mapping[str, str], n_images: int, used: str) -> Evaluation:
    """One chain's :func:`evaluate_chain` dictionary from its per-metric summaries."""
    per_metric = {m: r for m, r in summaries.items() if m in wanted}
    mse = summaries["mse"]
    return Evaluation({
        "stages": {s: {"mse": r["mean"], **r} for s, r in mse["stages"].items()},
        "mean_image_baseline": {"mse": mse["mean_image_baseline"]["mean"], **mse["mean_image_baseline"]},
        "metrics": per_metric,
        "metric_info": {m: dataclasses.asdict(METRICS[m]) for m in per_metric},
        "not_computed": {m: why for m, why in skipped.items() if m in wanted},
        "ci": interval_record(mse, per_metric),
        "psnr_both_ways": psnr_both_ways(summaries),
        "pixel_space": "[0, 1]",
        "n_images": n_images,
        "precision": used,
        "model": model.name,
        "weights": model.weights,
    })


def metric_text(name: str, summary: Mapping[str, Any]) -> str:
    """A metric's mean and 95% CI as printed (``format_ci`` with the metric's digits); a PSNR made
    infinite by perfect reconstructions prints ``inf dB (k perfect reconstructions)``."""
    if summary.get("n_infinite"):
        return f"inf{' dB' if name == 'psnr' else ''} ({summary['n_infinite']} perfect reconstructions)"
    return format_ci(summary, digits=DIGITS.get(name, 4))


def evaluation_lines(entry: Mapping[str, Any], indent: str = "", baseline: str = "(mean-image baseline)") -> list[str]:
    """The printed form of an :func:`evaluate_chain` result: one line per stage and metric, then the
    mean-image baseline per metric (an older entry without ``"metrics"``: its MSE only)."""
    per_metric = entry.get("metrics") or {"mse": {"stages": entry["stages"],
                                                  "mean_image_baseline": entry["mean_image_baseline"]}}
    lines = []
    for stage in entry["stages"]:
        for name, result in per_metric.items():
            r = result["stages"][stage]
            lines.append(f"{indent}{stage:<8} {name.upper():<5} {metric_text(name, r)}  n={r['n']}")
    for name, result in per_metric.items():
        lines.append(f"{indent}{'mean':<8} {name.upper():<5} {metric_text(name, result['mean_image_baseline'])}  "
                     f"{baseline}")
    return lines

