"""The settings of a training run (:class:`TrainConfig`), written to its ``config.json``."""

from __future__ import annotations

import math
from numbers import Integral, Real
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
    channels_last: bool = True  # convolutions in the device's fastest memory format (runtime.conv_memory_format)
    compile: bool = False  # torch.compile each trained component
    reuse_memory: bool = True  # CPU: freed memory serves the next step (runtime.reuse_freed_memory)
    max_nonfinite: int = 20  # consecutive skipped updates of one component before the run stops
    stop_on_interrupt: bool = False  # Ctrl-C after a step ends training like the budget (no checkpoint)
    overwrite: bool = False  # a new run replaces a previous run in its folder (run_folder.RUN_FILES)
    recipe: str = "modinv"  # the recipe these settings came from (modinv.models.recipes)
    component_mode: str = "train"  # "eval": components train in eval mode (BatchNorm statistics never change)
    image_loss_space: str = "pixels"  # losses against the image: on [0, 1] pixels or normalised images
    joint_clip: bool = False  # one gradient-norm clip over all of an update's parameters (not per optimiser)

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
        for name, low in _WHOLE_NUMBERS.items():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < low):
                raise ModinvError(f"{name} must be a whole number of at least {low}, got {value!r}")
        if not (isinstance(self.grad_clip, Real) and self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ModinvError(f"grad_clip must be a positive number, got {self.grad_clip!r}")
        for name, value, valid in (("component_mode", self.component_mode, ("train", "eval")),
                                   ("image_loss_space", self.image_loss_space, ("pixels", "normalized"))):
            if value not in valid:
                raise ModinvError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        for stage, rate in self.lr.items():
            if isinstance(rate, bool) or not isinstance(rate, Real) or not (rate > 0 and math.isfinite(rate)):
                raise ModinvError(f"the learning rate of {stage!r} must be a positive number, got {rate!r}")


    def trained_stages(self, trainable: list[str]) -> list[str]:
        """The stages this config trains among the ``trainable`` components of a chain (all by
        default); one sentence for a stage that cannot train or a learning rate that nothing uses."""
        stages = list(self.stages or trainable)
        unknown = [s for s in stages if s not in trainable]
        if unknown:
            raise ModinvError(f"no trainable inverse component for stage(s) {', '.join(unknown)}; "
                              f"trainable ones: {', '.join(trainable) or 'none'}")
        unused = [s for s in self.lr if s not in stages]
        if unused:
            raise ModinvError(f"a learning rate (--lr) is given for {', '.join(map(repr, unused))}, which this run "
                              f"does not train; it trains {', '.join(stages)}")
        return stages


# Whole-number settings and their least value (steps 0 would save an untrained chain as best/).
_WHOLE_NUMBERS = {"steps": 1, "epochs": 1, "batch_size": 1, "val_every": 1, "val_batches": 1,
                  "checkpoint_every": 1, "log_every": 1, "num_workers": 0, "max_nonfinite": 1, "seed": 0}
