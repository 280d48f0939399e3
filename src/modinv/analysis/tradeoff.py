"""The reconstruction-task trade-off of λ fine-tuning (paper Fig. 4 centre and right).

From run folders of ``modinv finetune`` (λ fine-tuning, Eq. 3), ``modinv train`` (the modular
chain) and ``modinv train --classic`` (the classic chain), all of one model and one stage j: the
image MSE of the reconstruction from stage j (mean with its 95% CI, [0, 1] pixels) against the
model's task metric (COCO box AP for detectors, top-1 for classifiers), one point per run labelled
by λ, ``modular`` or ``classic``. A fine-tuning run is scored with its fine-tuned forward weights,
the others with the weights they were trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from modinv.errors import ModinvError
from modinv.fileio import read_json

TASK_METRICS = {"detection": "AP", "classification": "top1"}


@dataclass
class TradeoffPoint:
    """One run: its label, kind (``finetune``, ``modular``, ``classic``), λ, stage-j MSE and task metric."""

    label: str
    kind: str
    run: str
    lam: float | None
    mse: float
    mse_ci95: list[float]
    task: float | None
    n_images: int


@dataclass
class Tradeoff:
    """Fig. 4 centre/right: the points of one model at one stage, and what they measure."""

    model: str
    stage: str
    task_metric: str
    points: list[TradeoffPoint] = field(default_factory=list)
    pixel_space: str = "[0, 1]"
    precision: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Run:
    path: Path
    kind: str
    model: str
    stage: str | None
    lam: float | None
    weights: str
    seed: int


def read_run(path: str | Path) -> _Run:
    """What a run folder says about itself (its ``config.json`` and its ``best/`` chain)."""
    path = Path(path)
    config = read_json(path / "config.json", "run config")
    if not (path / "best" / "manifest.json").is_file():
        raise ModinvError(f"run {str(path)!r} has no trained chain (best/manifest.json); let it finish first")
    train = config.get("train", {})
    if config.get("command") == "finetune":
        kind, stage, lam = "finetune", train.get("stage"), float(train.get("lam"))
        weights = str(path / "best" / "forward.safetensors")
    elif config.get("training") == "classic":
        kind, stage, lam, weights = "classic", config.get("classic_stage"), None, str(config.get("weights"))
    else:
        kind, stage, lam, weights = "modular", None, None, str(config.get("weights"))
    return _Run(path, kind, str(config.get("model")), stage, lam, weights, int(train.get("seed", 0)))


def check_runs(runs: Sequence[_Run]) -> tuple[str, str]:
    """``(model, stage)`` the runs share; one sentence when they are of different models or stages."""
    if not runs:
        raise ModinvError("give at least one run folder")
    models = sorted({r.model for r in runs})
    if len(models) > 1:
        raise ModinvError(f"the runs are of different models ({', '.join(models)}); give runs of one model")
    stages = sorted({r.stage for r in runs if r.stage is not None})
    if len(stages) != 1:
        what = f"different stages ({', '.join(stages)})" if stages else "no stage (only modular runs)"
        raise ModinvError(f"the fine-tuning and classic runs invert from {what}; give runs of one stage j")
    return models[0], stages[0]


def _label(run: _Run) -> str:
    return f"λ = {run.lam:g}" if run.kind == "finetune" else run.kind


def tradeoff(runs: Sequence[str | Path], source: Any, task_source: Any, batch_size: int = 8, limit: int | None = None,
             device: Any = "cpu", progress: bool = True,
             on_point: Callable[[TradeoffPoint], None] | None = None) -> Tradeoff:
    """Score every run: stage-j image MSE on ``source`` and the task metric on ``task_source``
    (float32). Runs of different models or stages are refused before any work."""
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.analysis.task import classification_top1, detection_ap
    from modinv.inverse.chain import InverseChain
    from modinv.inverse.storage import read_manifest
    from modinv.models.registry import load_model

    infos = [read_run(p) for p in runs]
    name, stage = check_runs(infos)
    result: Tradeoff | None = None
    task_cache: dict[str, float | None] = {}
    for info in infos:
        size = read_manifest(info.path / "best").get("input_size")
        model = load_model(name, weights=info.weights, seed=info.seed, device=device,
                           **({"input_size": tuple(size)} if size else {}))
        metric = TASK_METRICS.get(model.meta.task or "")
        if metric is None:
            raise ModinvError(f"model {name!r} declares no task (detection or classification); nothing to trade off")
        result = result or Tradeoff(model=name, stage=stage, task_metric=metric)
        chain = InverseChain.load(info.path / "best", model, map_location=model.device)
        if stage not in chain.components:
            raise ModinvError(f"the chain of run {str(info.path)!r} has no component for stage {stage!r}")
        mse = evaluate_chain(model, chain, source, stages=[stage], batch_size=batch_size, limit=limit,
                             progress=progress, metrics=["mse"])
        if info.weights not in task_cache:
            if metric == "AP":
                task_cache[info.weights] = detection_ap(model, task_source, batch_size=batch_size, limit=limit)["AP"]
            else:
                task_cache[info.weights] = classification_top1(model, task_source, batch_size, limit=limit)["top1"]
        summary = mse["stages"][stage]
        point = TradeoffPoint(_label(info), info.kind, str(info.path), info.lam, summary["mean"],
                              list(summary["ci95"]), task_cache[info.weights], mse["n_images"])
        result.points.append(point)
        if on_point is not None:
            on_point(point)
    assert result is not None
    return result


def tradeoff_figure(result: Tradeoff, path: str | Path) -> Path:
    """Stage-j MSE (95% CI bars) against the task metric, each point labelled (Fig. 4 centre/right)."""
    import matplotlib.pyplot as plt

    from modinv.figures import save_figure

    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    colors = {"finetune": "tab:blue", "modular": "tab:green", "classic": "tab:red"}
    for p in result.points:
        y = float("nan") if p.task is None else p.task
        ax.errorbar([y], [p.mse], yerr=[[p.mse - p.mse_ci95[0]], [p.mse_ci95[1] - p.mse]], fmt="o",
                    color=colors.get(p.kind, "black"), capsize=3)
        ax.annotate(p.label, (y, p.mse), textcoords="offset points", xytext=(5, 5), fontsize=8)
    metric = "AP" if result.task_metric == "AP" else "top-1 accuracy"
    ax.set_xlabel(f"{result.model} {metric}")
    ax.set_ylabel(f"image MSE from {result.stage} ([0, 1] pixels)")
    ax.set_title(f"Reconstruction vs task: {result.model}, stage {result.stage}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
