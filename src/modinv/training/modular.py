"""Modular training (Eq. 1): one frozen forward pass per batch feeds every inverse component.

Component j learns ``N⁻¹_j(x_j) ≈ x_{j-1}`` with its own loss, optimiser and gradient clipping;
inputs and targets come detached from the frozen model (eval mode, no grad), so components never
see each other's outputs during training. The loop is the :class:`~modinv.training.engine.Engine`'s.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Mapping

import torch.nn.functional as F
from torch import Tensor

from modinv.models.base import IMAGE, Trace
from modinv.training.engine import Engine, TrainConfig
from modinv.training.objective import Objective, Update

__all__ = ["ModularObjective", "ModularTrainer", "TrainConfig"]


class ModularObjective(Objective):
    """Eq. 1: every trained component minimises the MSE between its inverse of stage j and the
    frozen model's stage j-1 (the image in [0, 1] for the first stage); each is its own update, so
    a non-finite loss of one component skips only that component's update."""

    def component_loss(self, stage: str, trace: Trace, training: bool = True) -> Tensor:
        """MSE between N⁻¹_j(x_j) and x_{j-1}, in float32 (against the image: in the run's image
        loss space, :meth:`Engine.image_mse`)."""
        engine = self.engine
        previous = engine.model.previous(stage)
        with engine.autocast():
            prediction = engine.module(stage, training)(trace[stage], trace.context)
        if previous == IMAGE:
            return engine.image_mse(prediction, trace[previous])
        return F.mse_loss(prediction.float(), trace[previous].float())

    def _update(self, stage: str, trace: Trace) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.component_loss(stage, trace)
        return loss, {stage: loss}

    def updates(self, batch: Mapping[str, Any]) -> Iterator[Update]:
        trace = self.engine.frozen_trace(batch["image"])  # the one frozen forward pass of the batch
        for stage in self.engine.stages:
            yield Update(stage, [stage], partial(self._update, stage, trace))

    @property
    def metric_names(self) -> list[str]:
        return list(self.engine.stages)

    def validation_metrics(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        trace = self.engine.frozen_trace(batch["image"])
        return {s: self.component_loss(s, trace, training=False) for s in self.engine.stages}


class ModularTrainer(Engine):
    """Train the components of ``chain`` for ``model`` with Eq. 1 (see :class:`Engine` for the
    arguments and the run folder it writes)."""

    objective_class = ModularObjective
