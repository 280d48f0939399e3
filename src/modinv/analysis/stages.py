"""Per-stage reconstruction error with confidence intervals and the mean-image baseline, side by side (Fig. 4 left).

    result = stage_errors(model, chain, source)              # the JSON of `modinv evaluate`, plus a label
    plot_stage_errors({"DETR": result, "ViT": other}, "stages.png")

Every entry is the output of :func:`modinv.analysis.evaluate.evaluate_chain`: per stage the mean
image MSE in [0, 1] pixel space over the images with a 95% Student-t confidence interval over
images, and the same for the mean-image baseline (each image against the data set's mean image).
The figure puts the models side by side: one line with error bars per model over the stages (in
processing order, the union of all models' stages) and, at the right, its "mean" baseline point.

CLI: ``modinv analyze stages --model M --inverse CHAIN [CHAIN ...] --data SPEC --out DIR
[--compare FILE.json ...]`` writes ``DIR/stages.png`` and ``DIR/stages.json``. ``--compare`` adds
entries saved earlier by ``modinv evaluate`` or by this analysis (e.g. another model's).

``stages.json``: ``{"analysis": "stages", "results": {label: evaluate-json}, "order": [labels],
"pixel_space": "[0, 1]", "ci": ..., "figure": "stages.png"}``; each evaluate-json has ``"stages"``
(``{stage: {"mse", "ci95", "n", "std"}}``), ``"mean_image_baseline"`` (same keys), ``"n_images"``,
``"model"``, ``"weights"``, ``"label"`` and, from the CLI, ``"inverse"`` and ``"data"``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from modinv.analysis.common import read_compare_file
from modinv.errors import ModinvError

CI_METHOD = "95% Student-t confidence interval of the mean over images"
BASELINE = "mean"


def stage_errors(
    model,
    chain,
    source,
    stages: Sequence[str] | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    amp: str = "off",
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """Per-stage image MSE (95% CI) and the mean-image baseline of ``chain`` on ``source``.

    The result of :func:`~modinv.analysis.evaluate.evaluate_chain` plus ``"label"`` (default: the
    model's name), ready for :func:`plot_stage_errors`.
    """
    from modinv.analysis.evaluate import evaluate_chain

    result = evaluate_chain(model, chain, source, stages=list(stages) if stages else None,
                            batch_size=batch_size, limit=limit, amp=amp, progress=progress)
    result["label"] = label or model.name
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


def plot_stage_errors(results: Mapping[str, Mapping[str, Any]], path: str | Path,
                      title: str | None = None) -> Path:
    """Save Fig. 4 (left): per-stage MSE with 95% CI error bars per model, and each model's
    mean-image baseline at the right ("mean"). ``results``: ``{label: evaluate-json}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modinv.figures import save_figure

    if not results:
        raise ModinvError("no results to plot")
    for label, entry in results.items():
        _check_entry(label, entry)
    stages = stage_order(results)
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
    data = read_compare_file(path)
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


def _unique(label: str, taken: Mapping[str, Any]) -> str:
    if label not in taken:
        return label
    k = 2
    while f"{label} ({k})" in taken:
        k += 1
    return f"{label} ({k})"


# -- CLI ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", nargs="+", default=[], metavar="FILE.json",
                        help="add results saved by `modinv evaluate` or `modinv analyze stages` (e.g. another model)")
    parser.add_argument("--label", nargs="+", metavar="LABEL",
                        help="legend label(s) of this run's chain(s) (default: the model name, plus the chain folder "
                             "when several chains are given)")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    from modinv.cli.common import model_from_args, writable_dir
    from modinv.data import open_source
    from modinv.inverse.chain import InverseChain

    out = writable_dir(args.out)
    compare: dict[str, dict[str, Any]] = {}
    for file in args.compare:  # read them first: a bad file fails before any work
        for label, entry in load_results(file).items():
            compare[_unique(label, compare)] = entry
    inverses = list(args.inverse)
    labels = list(args.label or [])
    if labels and len(labels) != len(inverses):
        raise ModinvError(f"--label needs one label per --inverse chain ({len(inverses)}), got {len(labels)}")
    model = model_from_args(args)
    source = open_source(args.data, size=tuple(model.input_size))
    results: dict[str, dict[str, Any]] = {}
    for i, inverse in enumerate(inverses):
        chain = InverseChain.load(inverse, model, map_location=model.device)
        if labels:
            label = labels[i]
        elif len(inverses) > 1:
            label = f"{model.name} [{Path(inverse).name or inverse}]"
        else:
            label = model.name
        result = stage_errors(model, chain, source, batch_size=args.batch, limit=args.limit, amp=args.amp,
                              label=label)
        result["inverse"] = str(inverse)
        result["data"] = args.data
        results[_unique(label, results)] = result
    for label, entry in compare.items():
        results[_unique(label, results)] = entry
    figure = plot_stage_errors(results, out / "stages.png")
    payload = {
        "analysis": "stages",
        "results": results,
        "order": list(results),
        "stage_order": stage_order(results),
        "pixel_space": "[0, 1]",
        "ci": CI_METHOD,
        "figure": figure.name,
    }
    (out / "stages.json").write_text(json.dumps(payload, indent=2) + "\n")
    for label, entry in results.items():
        print(label)
        for stage, r in entry["stages"].items():
            print(f"  {stage:<8} MSE {r['mse']:.5f}  95% CI [{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}]  n={r['n']}")
        b = entry["mean_image_baseline"]
        print(f"  {BASELINE:<8} MSE {b['mse']:.5f}  95% CI [{b['ci95'][0]:.5f}, {b['ci95'][1]:.5f}]  (mean image)")
    print(f"wrote {out / 'stages.png'} and {out / 'stages.json'}")
    return payload
