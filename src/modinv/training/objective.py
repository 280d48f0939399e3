"""What a training run optimises, as the :class:`~modinv.training.engine.Engine` asks for it.

An objective says which components train (through its checks and the engine's stage choice), turns
a batch into :class:`Update` s (each: one loss and the parameters it updates together), and says
what validation measures and which number decides the best checkpoint of each component. The
engine owns the rest: the data order, the optimiser steps, gradient clipping, skipping non-finite
updates, validation batches, best-keeping, checkpoints and resume, the time budget and DDP.

The three objectives: :class:`~modinv.training.modular.ModularObjective` (Eq. 1),
:class:`~modinv.training.classic.ClassicObjective` and
:class:`~modinv.training.finetune.FinetuneObjective` (Eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from modinv.distributed import DistContext
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel, Trace
from modinv.training.config import TrainConfig


class EngineView(Protocol):
    """What an objective may use of the engine that runs it (the engine imports this module, so
    objectives see it through this protocol rather than its class)."""

    model: StagedModel
    chain: InverseChain
    config: TrainConfig
    dist: DistContext
    device: torch.device
    out: Path
    stages: list[str]
    step: int

    def frozen_trace(self, images: Tensor, end: str | None = None) -> Trace:
        """The frozen forward pass of a batch, without gradients, in the run's precision."""

    def module(self, stage: str, training: bool = True) -> nn.Module:
        """The component of ``stage`` as training (or, ``training=False``, validation) calls it."""

    def autocast(self) -> ContextManager:
        """Autocast in the run's training precision."""


@dataclass
class Update:
    """One loss and what it updates together: every optimiser steps, or (non-finite) none does.

    ``compute`` runs the forward pass and returns the loss to back-propagate and the values to log.
    ``stages``: the inverse components it updates (each with its own optimiser, clipped on its own);
    ``optimizers``: further optimisers stepped with them (e.g. the forward weights θ), also clipped
    on their own; ``modules``: further modules whose buffers a skipped update restores. ``name`` is
    the stage whose non-finite count, warning and log record the update carries.
    """

    name: str
    stages: Sequence[str]
    compute: Callable[[], tuple[Tensor, dict[str, Tensor]]]
    optimizers: Mapping[str, Optimizer] = field(default_factory=dict)
    modules: Sequence[nn.Module] = ()


class Objective:
    """Base class: the hooks the engine calls, with the defaults of a plain inverse-training run."""

    method: str | None = None  # recorded with each trained component ("classic", "finetune")
    engine: EngineView

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Objective":
        """The objective a trainer class builds from its config (the config's extra fields)."""
        return cls()

    def prepare(self, engine: EngineView) -> None:
        """Bind to ``engine`` (model, chain, config, dist are set; stages and optimisers not yet):
        check that the chain fits the objective and mark its layout."""
        self.engine = engine

    def run_info(self) -> dict[str, Any]:
        """Extra entries of the run's ``config.json``."""
        return {}

    def updates(self, batch: Mapping[str, Any]) -> Iterable[Update]:
        """The updates of one training batch, applied in order."""
        raise NotImplementedError

    @property
    def metric_names(self) -> list[str]:
        """Names of :meth:`validation_metrics`, the same on every process and batch."""
        raise NotImplementedError

    def validation_metrics(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Per-batch means (``metric_names``) on a validation batch; components are in eval mode."""
        raise NotImplementedError

    def summarize(self, means: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """``(validation loss per trained stage, further numbers for the log)`` from the means of
        :meth:`validation_metrics` over the validation set; the lowest loss of a stage is its best."""
        return {s: means[s] for s in self.engine.stages}, {}

    def training_info(self) -> dict[str, Any]:
        """Extra entries of every trained component's ``training`` metadata."""
        return {"method": self.method} if self.method else {}

    def state_dict(self) -> dict[str, Any]:
        """Objective state for checkpoints (tensors and plain types only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""

    def on_best(self, folder: Path) -> None:
        """Called on the main process after the engine rewrote the best chain in ``folder``."""
