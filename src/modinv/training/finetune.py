"""λ fine-tuning of the forward model with a classic inverse (paper Eq. 3, Section 4.2).

    L(θ ∪ φ) = λ·L_MSE(θ) + (1-λ)·L_OBJ(θ) + L_MSE(φ)

θ are the forward model's weights, φ the classic inverse chain from stage j to the image
(:func:`modinv.training.classic.build_classic_chain`); L_MSE is the image MSE of that chain's
reconstruction from x_j = N_{0:j}(x; θ), in [0, 1] pixel space; L_OBJ is the model's own objective:
DETR's Hungarian set loss (:mod:`modinv.training.set_loss`) on COCO boxes, cross-entropy on class
labels for classifiers (:mod:`modinv.training.task`; the model's metadata says which).

How the three terms reach the parameters (one forward pass, one backward pass):

- φ gets the gradient of L_MSE with weight 1, whatever λ is (the L_MSE(φ) term);
- θ gets λ·∂L_MSE/∂θ + (1-λ)·∂L_OBJ/∂θ. The reconstruction gradient that flows from the inverse
  back into x_j is scaled by λ with an identity-forward function (:func:`scale_gradient`), so the
  same reconstruction serves both MSE terms; at λ = 0 x_j is detached.
- λ = 1: L_OBJ is not even computed: targets are not read, so the result does not depend on them.
- λ = 0 (``zero_lambda="task"``, the default): θ is fine-tuned on L_OBJ alone while φ learns the
  classic inversion of the changing x_j, which is what the paper did (Eq. 3 at λ = 0; its λ = 0 ViT
  beat the released model's top-1, so θ did train). x_j is detached before the inverse, so the
  reconstruction gradient into θ is exactly zero and θ's gradient is the task loss's alone; this is
  also the recipe of the no-self-attention ViT (cross-entropy only). ``zero_lambda="frozen"`` keeps
  the forward model frozen instead (bit-identical weights and buffers, eval mode, no optimiser) and
  trains only φ: the classic inversion of the unmodified model. Which one ran is recorded as
  ``"zero_lambda"`` in ``config.json`` and in the chain's manifest.

Forward model mode while θ trains (``forward_mode``): ``"dropout"`` (default) puts the model in
training mode except its BatchNorm layers, which keep their running statistics (DETR's recipe:
dropout 0.1 in its transformer, frozen BatchNorm; timm's ViT-B/16 has no dropout, so it is
deterministic either way); ``"eval"`` keeps everything in eval mode (deterministic, the
representations the inverse will later see); ``"train"`` is full training mode (BatchNorm
statistics update too). Validation always runs in eval mode. All forward parameters train
(DETR's own recipe would keep its ResNet stem and layer1 frozen).

Optimisers: θ one Adam (``theta_lr``, default 1e-5, no weight decay, so θ changes only through the
loss), clipped to ``grad_clip``; φ one Adam per component at its paper learning rate, each
clipped to ``grad_clip``, as in :class:`~modinv.training.classic.ClassicObjective`; all of them step
together or, on a non-finite loss or gradient, none does (the engine's rule).

Outputs in ``OUT/best``: the inverse chain (manifest: ``"training": "finetune"``, ``"lambda"``,
``"finetune_stage"``, ``"zero_lambda"``) and ``forward.safetensors``, the forward weights of the
same step, a state dict that ``load_model(name, weights=PATH)`` accepts. "Best" is the lowest validation value of
Eq. 3 ((1+λ)·MSE + (1-λ)·L_OBJ; MSE alone where θ is frozen); without validation data, the final
weights. Checkpoints (``OUT/checkpoints``) carry θ and its optimiser, so ``resume`` continues.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from modinv.errors import ModinvError
from modinv.inverse.storage import record_file_checksum
from modinv.models.base import IMAGE, Trace
from modinv.training.classic import classic_path, reconstruct_through
from modinv.training.engine import Engine, TrainConfig
from modinv.training.objective import Objective, Update
from modinv.training.optim import make_optimizer
from modinv.training.task import (FORWARD_MODES, FORWARD_WEIGHTS_FILE, batch_targets, default_finetune_stage,
                                  forward_state_dict, save_forward_weights, scale_gradient, set_forward_mode,
                                  task_kind, task_loss)

__all__ = [
    "FORWARD_MODES",
    "FORWARD_WEIGHTS_FILE",
    "FinetuneConfig",
    "FinetuneObjective",
    "FinetuneTrainer",
    "batch_targets",
    "default_finetune_stage",
    "forward_state_dict",
    "save_forward_weights",
    "scale_gradient",
    "set_forward_mode",
    "task_kind",
    "task_loss",
]

ZERO_LAMBDA = ("task", "frozen")  # readings of λ = 0, the paper's first


@dataclass
class FinetuneConfig(TrainConfig):
    """:class:`TrainConfig` plus Eq. 3's settings."""

    stage: str = ""  # j: the stage the classic inverse starts from (paper: dec for DETR, enc for ViT)
    lam: float = 0.9  # λ in [0, 1]
    theta_lr: float = 1e-5  # Adam learning rate of the forward weights
    forward_mode: str = "dropout"  # "dropout" | "eval" | "train"
    zero_lambda: str = "task"  # at λ = 0: θ trained on L_OBJ alone (the paper) or "frozen" (unmodified model)


class FinetuneObjective(Objective):
    """Eq. 3 for the forward weights θ (the model, changed in place) and the classic inverse φ
    (stage j -> img): one update of φ and θ together. Validation measures the image MSE, the task
    loss (and top-1 for classifiers) and ranks by (1+λ)·MSE + (1-λ)·L_OBJ (MSE alone where θ is frozen)."""

    method = "finetune"

    def __init__(self, config: FinetuneConfig) -> None:
        lam = float(config.lam)
        if not 0.0 <= lam <= 1.0 or math.isnan(lam):
            raise ModinvError(f"λ must be in [0, 1], got {config.lam}")
        if config.zero_lambda not in ZERO_LAMBDA:
            raise ModinvError(f"zero_lambda must be one of {', '.join(ZERO_LAMBDA)}, got {config.zero_lambda!r}")
        if config.forward_mode not in FORWARD_MODES:
            raise ModinvError(f"unknown forward mode {config.forward_mode!r}; valid: {', '.join(FORWARD_MODES)}")
        if not config.stage:
            raise ModinvError("fine-tuning needs the stage j of the inverse (config.stage)")
        self.config, self.stage, self.lam = config, config.stage, lam
        self.theta_trains = lam > 0 or config.zero_lambda == "task"
        self.task_weight = (1.0 - lam) if self.theta_trains else 0.0
        self.theta_optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def from_config(cls, config: TrainConfig) -> "FinetuneObjective":
        if not isinstance(config, FinetuneConfig):
            raise ModinvError("fine-tuning needs a FinetuneConfig (λ and the stage j)")
        return cls(config)

    def prepare(self, engine: Engine) -> None:
        super().prepare(engine)
        if engine.dist.enabled:
            raise ModinvError("fine-tuning runs in one process (the forward model is not DDP-wrapped); "
                              "start it without torchrun")
        model, chain = engine.model, engine.chain
        self.path = classic_path(model, self.stage)
        if sorted(chain.stages) != sorted(self.path):
            raise ModinvError(
                f"fine-tuning from {self.stage!r} needs the classic chain of {', '.join(self.path)}; this chain "
                f"holds {', '.join(chain.stages) or 'nothing'} (build it with build_classic_chain)"
            )
        chain.layout.pop("classic_stage", None)  # built as a classic chain, now a fine-tuned one
        chain.layout.update({
            "training": "finetune", "lambda": self.lam, "finetune_stage": self.stage,
            "zero_lambda": self.config.zero_lambda,
            "start_weights": str(getattr(model, "weights", "unknown")),
            "forward_weights": FORWARD_WEIGHTS_FILE,
            # the chain belongs to the fine-tuned weights written next to it
            "weights": str((engine.out / "best" / FORWARD_WEIGHTS_FILE).resolve()),
        })
        if self.theta_trains:
            model.requires_grad_(True)
            self.theta_optimizer = make_optimizer(model, self.config.theta_lr)  # θ: the largest set, fused Adam

    def run_info(self) -> dict[str, Any]:
        return {"training": "finetune", "lambda": self.lam, "finetune_stage": self.stage,
                "zero_lambda": self.config.zero_lambda, "task": task_kind(self.engine.model),
                "theta_trains": self.theta_trains}

    def training_info(self) -> dict[str, Any]:
        return {"method": "finetune", "lambda": self.lam, "finetune_stage": self.stage,
                "theta_lr": self.config.theta_lr if self.theta_trains else None,
                "forward_mode": self.config.forward_mode if self.theta_trains else "eval (frozen)",
                "zero_lambda": self.config.zero_lambda}

    # -- checkpoints carry θ and its optimiser ---------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.theta_optimizer is None:
            return {}
        return {"forward_model": {k: v.detach().cpu().clone() for k, v in self.engine.model.state_dict().items()},
                "forward_optimizer": self.theta_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.theta_optimizer is not None and state:
            self.engine.model.load_state_dict(state["forward_model"])
            self.theta_optimizer.load_state_dict(state["forward_optimizer"])

    # -- the losses ------------------------------------------------------------------------------------
    def forward_trace(self, images: Tensor, grad: bool) -> Trace:
        """The forward pass, with gradients into θ when ``grad`` (else frozen and detached), up to
        the last stage when L_OBJ is needed, else up to the inverted stage."""
        engine = self.engine
        end = engine.model.stages[-1] if self.task_weight > 0 else self.stage
        if not grad:
            return engine.frozen_trace(images, end=end)
        with engine.autocast():
            return engine.model.trace(images.to(engine.device, non_blocking=True), end=end)

    def losses(self, trace: Trace, targets: Any = None, training: bool = True) -> dict[str, Tensor]:
        """``{"mse", "task", "total"}`` of Eq. 3 on a trace (``task`` only with ``targets``;
        ``top1`` too for classifiers); ``total`` is what is back-propagated: L_MSE, whose gradient
        reaches x_j (hence θ) scaled by λ and φ at weight 1, + (1-λ)·L_OBJ."""
        x = trace[self.stage]
        if self.lam == 0 or not self.theta_trains:
            x = x.detach()
        elif self.lam < 1:
            x = scale_gradient(x, self.lam)
        x = reconstruct_through(self.engine, self.path, x, trace, training)
        mse = self.engine.image_mse(x, trace[IMAGE])
        out = {"mse": mse, "total": mse}
        if targets is not None:
            with self.engine.autocast():
                output = self.engine.model.output(trace)
            out["task"] = task_loss(self.engine.model, output, targets)
            if isinstance(targets, Tensor) and isinstance(output, Tensor):
                out["top1"] = (output.argmax(-1) == targets).float().mean()
            if self.task_weight > 0:
                out["total"] = mse + self.task_weight * out["task"]
        return out

    def _step(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        model = self.engine.model
        if self.theta_trains:
            set_forward_mode(model, self.config.forward_mode)
        else:
            model.eval()
        trace = self.forward_trace(batch["image"], grad=self.theta_trains)
        targets = batch_targets(model, batch, self.engine.device) if self.task_weight > 0 else None
        losses = self.losses(trace, targets)
        return losses["total"], losses

    def updates(self, batch: Mapping[str, Any]) -> Iterator[Update]:
        theta = {"forward model": self.theta_optimizer} if self.theta_optimizer is not None else {}
        yield Update(self.stage, list(self.engine.stages), partial(self._step, batch), optimizers=theta,
                     modules=[self.engine.model] if theta else ())

    # -- validation and outputs --------------------------------------------------------------------------
    @property
    def metric_names(self) -> list[str]:
        if self.task_weight == 0:
            return ["mse"]
        return ["mse", "task"] + (["top1"] if task_kind(self.engine.model) == "classification" else [])

    def validation_metrics(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        engine = self.engine
        targets = batch_targets(engine.model, batch, engine.device) if self.task_weight > 0 else None
        trace = self.forward_trace(batch["image"], grad=False)
        return {k: v for k, v in self.losses(trace, targets, training=False).items() if k != "total"}

    def summarize(self, means: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        objective = (1.0 + self.lam) * means["mse"] if self.theta_trains else means["mse"]
        if "task" in means and self.task_weight > 0:
            objective += self.task_weight * means["task"]
        parts = {"image_mse": means["mse"], **{k: v for k, v in means.items() if k != "mse"}, "objective": objective}
        return {s: objective for s in self.engine.stages}, parts

    def on_best(self, folder: Path) -> None:
        self.save_forward(folder / FORWARD_WEIGHTS_FILE)
        record_file_checksum(folder, FORWARD_WEIGHTS_FILE)  # checked when --weights loads it

    def save_forward(self, path: str | os.PathLike) -> Path:
        """The forward weights as a safetensors state dict ``load_model(..., weights=PATH)`` reads."""
        return save_forward_weights(self.engine.model, path, metadata={
            "training": "finetune", "lambda": repr(self.lam), "stage": self.stage, "step": str(self.engine.step),
            "start_weights": str(self.engine.chain.layout.get("start_weights")),
        })


class FinetuneTrainer(Engine):
    """Fine-tune ``model`` (θ) and train the classic inverse ``chain`` (φ, ``config.stage`` -> img)
    with Eq. 3 (a :class:`FinetuneConfig`). ``model`` is changed in place and frozen again when
    :meth:`fit` returns; ``OUT/best`` then holds the chain and ``forward.safetensors``."""

    objective_class = FinetuneObjective
