"""The one way a training run is assembled: :func:`train` (``modinv.training.train``).

``modinv train``, ``modinv finetune`` and the demo all call it; it builds the chain the method
trains, opens the data, makes the config and the trainer of the method, runs it and returns a
:class:`TrainResult`::

    result = modinv.training.train(model, "samples", "runs/demo", settings={"steps": 100, "batch_size": 8})
    result.best          # {stage: {"val_loss": ..., "step": ...}}; the best chain is in result.out / "best"

Methods: ``"modular"`` (Eq. 1, every component on its own), ``"classic"`` (one chain ``stage ->
img`` trained end to end) and ``"finetune"`` (Eq. 3, the forward weights too; ``stage`` defaults
to the model's declared one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel
from modinv.training.config import TrainConfig
from modinv.training.data import split_sources
from modinv.training.engine import Engine

METHODS = ("modular", "classic", "finetune")


@dataclass
class TrainResult:
    """What a run produced: the run folder ``out`` (its best chain in ``out/best``), the chain as
    training left it, the best validation loss and step of each trained component, and the trainer
    (``step``, ``epoch``, ``seconds``, ``stop_reason``, ``lrs``, ``objective``)."""

    out: Path
    chain: InverseChain
    best: dict[str, dict[str, Any]]
    trainer: Engine

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped: "step limit", "time budget" or "interrupt"."""
        return self.trainer.stop_reason

    @property
    def steps(self) -> int:
        """Optimisation steps done (a resumed run counts its earlier ones too)."""
        return self.trainer.step


def _trainer_class(method: str) -> tuple[type[Engine], type[TrainConfig]]:
    """The trainer and config classes of ``method`` (each imported only when asked for)."""
    if method == "modular":
        from modinv.training.modular import ModularTrainer

        return ModularTrainer, TrainConfig
    if method == "classic":
        from modinv.training.classic import ClassicConfig, ClassicTrainer

        return ClassicTrainer, ClassicConfig
    if method == "finetune":
        from modinv.training.finetune import FinetuneConfig, FinetuneTrainer

        return FinetuneTrainer, FinetuneConfig
    raise ModinvError(f"unknown training method {method!r}; valid: {', '.join(METHODS)}")


def _inverted_stage(model: StagedModel, method: str, stage: str | None) -> str | None:
    """The stage a classic or fine-tuning chain inverts from (checked against the model)."""
    if method == "modular":
        if stage is not None:
            raise ModinvError("a modular run trains one component per stage; choose them with settings['stages']")
        return None
    if stage is None and method == "finetune":
        from modinv.training.finetune import default_finetune_stage

        stage = default_finetune_stage(model)
    if stage is None:
        raise ModinvError("a classic run needs the stage whose chain to the image it trains (stage=...)")
    model.stage_index(stage)  # one sentence for an unknown stage
    return stage


def fresh_chain(model: StagedModel, stage: str | None, arch: str, seed: int,
           variants: Mapping[str, str] | None) -> InverseChain:
    """A fresh chain: every stage's component (modular), or the components ``stage -> img``."""
    if stage is None:
        return InverseChain.build(model, arch=arch, seed=seed, variants=variants)
    from modinv.training.classic import build_classic_chain

    return build_classic_chain(model, stage, arch=arch, seed=seed, variants=variants)


def _data(model: StagedModel, data: str | Dataset, val_data: str | Dataset | None, val_fraction: float,
          augment: bool, seed: int, source_options: Mapping[str, Any]) -> tuple[Dataset, Dataset | None, dict]:
    """``(train, validation, what config.json records of them)`` from source specs or data sets."""
    if not isinstance(data, str):
        if isinstance(val_data, str):
            raise ModinvError("pass val_data as a data set when data is one (or both as source specs)")
        return data, val_data, {"data": getattr(data, "spec", None)}
    train_set, val_set = split_sources(data, tuple(model.input_size), val_data=val_data, val_fraction=val_fraction,
                                       augment=augment, seed=seed, **source_options)
    return train_set, val_set, {"data": data, "val_data": val_data, "val_fraction": val_fraction, "augment": augment}


def train(
    model: StagedModel,
    data: str | Dataset,
    out: str | Path,
    *,
    method: str = "modular",
    stage: str | None = None,
    settings: Mapping[str, Any] | None = None,
    chain: InverseChain | None = None,
    arch: str = "default",
    variants: Mapping[str, str] | None = None,
    val_data: str | Dataset | None = None,
    val_fraction: float = 0.1,
    augment: bool = False,
    source_options: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    dist: DistContext = SINGLE,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train inverse components of ``model`` on ``data`` into the run folder ``out``.

    ``data`` / ``val_data``: source specs (``"samples"``, ``"folder:PATH"``, ``"coco:ROOT"``, …;
    without ``val_data`` a ``val_fraction`` share is held out, seeded) or data sets.
    ``settings``: the fields of the method's config (:class:`~modinv.training.config.TrainConfig`:
    ``steps`` or ``epochs``, ``batch_size``, ``seed``, ``lr``, ``stages``, …; fine-tuning adds
    ``lam``, ``theta_lr``, …). ``chain``: the chain to train (default: a fresh one of ``arch`` and
    ``variants``, seeded with the settings' seed). ``run_info``: more entries of ``config.json``.
    ``resume`` continues the run in ``out``; ``on_record`` hears every log record.
    """
    trainer_class, config_class = _trainer_class(method)
    stage = _inverted_stage(model, method, stage)
    settings = dict(settings or {})
    seed = int(settings.get("seed", 0))
    config = config_class(**settings, **({"stage": stage} if stage is not None else {}))
    chain = chain if chain is not None else fresh_chain(model, stage, arch, seed, variants)
    train_set, val_set, recorded = _data(model, data, val_data, val_fraction, augment, seed, source_options or {})
    info = {**recorded, "arch": chain.arch, **(run_info or {})}
    trainer = trainer_class(model, chain, train_set, val_set, out, config, run_info=info, dist=dist,
                            on_record=on_record)
    best = trainer.fit(resume=resume, progress=progress)
    return TrainResult(out=Path(out), chain=chain, best=best, trainer=trainer)
