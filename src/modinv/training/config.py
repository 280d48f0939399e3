"""The settings of a training run (:class:`TrainConfig`), written to its ``config.json``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from modinv.errors import ModinvError


@dataclass
class TrainConfig:
    """Everything that decides a training run; written to ``config.json`` with the run."""

    stages: list[str] | None = None  # components to train (default: all of the chain)
    steps: int | None = None  # optimisation steps; or
    epochs: int | None = None  # passes over the training data
    max_seconds: float | None = None  # time budget: stop after this much training, validate, keep the best
    batch_size: int = 32  # global batch: split evenly over torchrun processes
    seed: int = 0
    lr: dict[str, float] = field(default_factory=dict)  # per-stage overrides of the paper rates
    grad_clip: float = 1.0
    val_every: int = 500
    val_batches: int = 25
    checkpoint_every: int = 500
    log_every: int = 10
    amp: str = "auto"
    num_workers: int = 0
    drop_last: bool = False  # drop each epoch's last, smaller batch
    channels_last: bool = True  # convolutional components on CUDA
    compile: bool = False  # torch.compile each trained component
    max_nonfinite: int = 20  # consecutive skipped updates of one component before the run stops
    stop_on_interrupt: bool = False  # Ctrl-C after a step ends training like the budget (no checkpoint)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """One sentence for a config that cannot run."""
        if self.steps is not None and self.epochs is not None:
            raise ModinvError("give exactly one of steps or epochs")
        if self.steps is None and self.epochs is None and self.max_seconds is None:
            raise ModinvError("give exactly one of steps or epochs (or a time budget, max_seconds)")
        if self.max_seconds is not None and not (self.max_seconds > 0 and math.isfinite(self.max_seconds)):
            raise ModinvError(f"the time budget must be a positive number of seconds, got {self.max_seconds}")
