"""λ fine-tuning of the forward model with a classic inverse (paper Eq. 3, Section 4.2).

    L(θ ∪ φ) = λ·L_MSE(θ) + (1-λ)·L_OBJ(θ) + L_MSE(φ)

θ are the forward model's weights, φ the classic inverse chain from stage j to the image
(:func:`modinv.training.classic.build_classic_chain`); L_MSE is the image MSE of that chain's
reconstruction from x_j = N_{0:j}(x; θ), in [0, 1] pixel space; L_OBJ is the model's own objective:
DETR's Hungarian set loss (:mod:`modinv.training.set_loss`) on COCO boxes, cross-entropy on class
labels for classifiers (ViT, its no-self-attention variant, MobileNet-V2, timm models).

How the three terms reach the parameters (one forward pass, one backward pass):

- φ gets the gradient of L_MSE with weight 1, whatever λ is (the L_MSE(φ) term);
- θ gets λ·∂L_MSE/∂θ + (1-λ)·∂L_OBJ/∂θ. The reconstruction gradient that flows from the inverse
  back into x_j is scaled by λ with an identity-forward function (:func:`scale_gradient`), so the
  same reconstruction serves both MSE terms; at λ = 0 x_j is detached.
- λ = 1: L_OBJ is not even computed: targets are not read, so the result does not depend on them.
- λ = 0: the forward model is **frozen** (bit-identical weights and buffers, eval mode, no
  optimiser) and only φ trains: the classic inversion, which is how the paper describes λ = 0
  ("the classic feature inversion approach, where the forward weights θ are not influenced by the
  reconstruction loss") and what the project's issue requires ("λ = 0 keeps θ unchanged").
  Eq. 3 read literally would still train θ on L_OBJ alone at λ = 0 (the paper's λ = 0 ViT reached
  a different top-1 than the released one, which suggests its code did that); ask for that with
  ``zero_lambda="task"``.

Forward model mode while θ trains (``forward_mode``): ``"dropout"`` (default) puts the model in
training mode except its BatchNorm layers, which keep their running statistics (DETR's recipe:
dropout 0.1 in its transformer, frozen BatchNorm; timm's ViT-B/16 has no dropout, so it is
deterministic either way); ``"eval"`` keeps everything in eval mode (deterministic, the
representations the inverse will later see); ``"train"`` is full training mode (BatchNorm
statistics update too). Validation always runs in eval mode. All forward parameters train
(DETR's own recipe would keep its ResNet stem and layer1 frozen).

Optimisers: θ one Adam (``theta_lr``, default 1e-5, no weight decay, so θ changes only through the
loss), clipped to ``grad_clip``; φ one Adam per component at its paper learning rate, each
clipped to ``grad_clip``, as in :class:`~modinv.training.classic.ClassicTrainer`.

Outputs in ``OUT/best``: the inverse chain (manifest: ``"training": "finetune"``, ``"lambda"``,
``"finetune_stage"``) and ``forward.safetensors``, the forward weights of the same step, a state
dict that ``load_model(name, weights=PATH)`` accepts. "Best" is the lowest validation value of
Eq. 3 ((1+λ)·MSE + (1-λ)·L_OBJ; MSE alone where θ is frozen); without validation data, the final
weights. Checkpoints (``OUT/checkpoints``) carry θ and its optimiser, so ``resume`` continues.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.runtime import autocast
from modinv.training.classic import classic_path
from modinv.training.modular import ModularTrainer, TrainConfig
from modinv.training.set_loss import detr_targets, set_loss

__all__ = [
    "FORWARD_MODES",
    "FORWARD_WEIGHTS_FILE",
    "FinetuneConfig",
    "FinetuneTrainer",
    "forward_state_dict",
    "save_forward_weights",
    "scale_gradient",
    "set_forward_mode",
    "task_kind",
    "task_loss",
]

FORWARD_MODES = ("dropout", "eval", "train")
ZERO_LAMBDA = ("frozen", "task")
FORWARD_WEIGHTS_FILE = "forward.safetensors"


# -- pieces ----------------------------------------------------------------------------------------

class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged (bit for bit) in the forward pass; its gradient multiplied by ``scale``."""
    return _ScaleGradient.apply(x, float(scale))


def task_kind(model: StagedModel) -> str:
    """``"detection"`` for DETR (set loss, COCO AP), ``"classification"`` otherwise (CE, top-1)."""
    from modinv.models.detr import DetrStagedModel

    return "detection" if isinstance(model, DetrStagedModel) else "classification"


def batch_targets(model: StagedModel, batch: Mapping[str, Any], device: torch.device | str = "cpu") -> Any:
    """L_OBJ's targets from a collated batch: DETR targets (normalised cxcywh boxes, labels = COCO
    category ids) from a COCO source, or the int64 class labels of an ImageNet-style source."""
    if task_kind(model) == "detection":
        if "boxes" not in batch or "labels" not in batch:
            raise ModinvError(
                "DETR's objective is its set loss on COCO boxes: fine-tune with λ < 1 on a coco:ROOT[:split] source"
            )
        return detr_targets(batch["boxes"], batch["labels"], tuple(model.input_size), device=device)
    label = batch.get("label")
    if not isinstance(label, Tensor):
        raise ModinvError(
            f"the objective of {model.name!r} is cross-entropy on class labels: fine-tune with λ < 1 on an "
            "imagenet:ROOT source (one folder per class)"
        )
    return label.to(device)


def task_loss(model: StagedModel, output: Any, targets: Any) -> Tensor:
    """L_OBJ: DETR's set loss (class 1, L1 5, GIoU 2, no-object 0.1) or cross-entropy."""
    if task_kind(model) == "detection":
        return set_loss(output["logits"], output["pred_boxes"], targets)["loss"]
    if not isinstance(output, Tensor) or output.ndim != 2:
        raise ModinvError(f"model {model.name!r} does not output class logits (B×classes); it cannot be fine-tuned "
                          "with cross-entropy")
    if int(targets.max()) >= output.shape[1]:
        raise ModinvError(f"class label {int(targets.max())} is outside the model's {output.shape[1]} classes")
    return F.cross_entropy(output.float(), targets)


def set_forward_mode(model: nn.Module, mode: str) -> None:
    """Put the forward model into ``mode`` (see the module docstring)."""
    if mode not in FORWARD_MODES:
        raise ModinvError(f"unknown forward mode {mode!r}; valid: {', '.join(FORWARD_MODES)}")
    model.train(mode != "eval")
    if mode == "dropout":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def forward_state_dict(model: StagedModel) -> dict[str, Tensor]:
    """The wrapped network's state dict in the key layout ``load_model(weights=PATH)`` reads: the
    adapter's common prefix (``detr.``, ``vit.``, ``net.``) removed; tensors contiguous CPU copies."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state):
        prefix = heads.pop() + "."
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def save_forward_weights(model: StagedModel, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write the forward model's weights as a safetensors state dict (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(forward_state_dict(model), str(tmp), metadata={"model": model.name, **dict(metadata or {})})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# -- the trainer -------------------------------------------------------------------------------------

@dataclass
class FinetuneConfig(TrainConfig):
    """:class:`TrainConfig` plus Eq. 3's settings."""

    stage: str = ""  # j: the stage the classic inverse starts from (paper: dec for DETR, enc for ViT)
    lam: float = 0.9  # λ in [0, 1]
    theta_lr: float = 1e-5  # Adam learning rate of the forward weights
    forward_mode: str = "dropout"  # "dropout" | "eval" | "train"
    zero_lambda: str = "frozen"  # at λ = 0: "frozen" θ (classic inversion) or "task" (θ trained on L_OBJ)


class FinetuneTrainer(ModularTrainer):
    """Fine-tune ``model`` (θ) and train the classic inverse ``chain`` (φ, stage j -> img) with Eq. 3.

    ``model`` is changed in place (it is frozen again when :meth:`fit` returns). The loop, logging,
    validation schedule, checkpoints, resume and best keeping are the :class:`ModularTrainer`'s.
    """

    def __init__(self, model: StagedModel, chain: InverseChain, train_data: Dataset, val_data: Dataset | None,
                 out_dir, config: FinetuneConfig, run_info: dict[str, Any] | None = None,
                 dist: DistContext = SINGLE) -> None:
        if dist.enabled:
            raise ModinvError("fine-tuning runs in one process (the forward model is not DDP-wrapped); "
                              "start it without torchrun")
        lam = float(config.lam)
        if not 0.0 <= lam <= 1.0 or math.isnan(lam):
            raise ModinvError(f"λ must be in [0, 1], got {config.lam}")
        if config.zero_lambda not in ZERO_LAMBDA:
            raise ModinvError(f"zero_lambda must be one of {', '.join(ZERO_LAMBDA)}, got {config.zero_lambda!r}")
        if config.forward_mode not in FORWARD_MODES:
            raise ModinvError(f"unknown forward mode {config.forward_mode!r}; valid: {', '.join(FORWARD_MODES)}")
        if not config.stage:
            raise ModinvError("fine-tuning needs the stage j of the inverse (config.stage)")
        self.stage, self.lam = config.stage, lam
        path = classic_path(model, config.stage)
        if sorted(chain.stages) != sorted(path):
            raise ModinvError(
                f"fine-tuning from {config.stage!r} needs the classic chain of {', '.join(path)}; this chain holds "
                f"{', '.join(chain.stages) or 'nothing'} (build it with build_classic_chain)"
            )
        self.theta_trains = lam > 0 or config.zero_lambda == "task"
        self.task_weight = (1.0 - lam) if self.theta_trains else 0.0
        out = Path(out_dir)
        chain.layout.update({
            "training": "finetune", "lambda": lam, "finetune_stage": config.stage,
            "start_weights": str(getattr(model, "weights", "unknown")),
            "forward_weights": FORWARD_WEIGHTS_FILE,
            # the chain belongs to the fine-tuned weights written next to it
            "weights": str((out / "best" / FORWARD_WEIGHTS_FILE).resolve()),
        })
        info = {"training": "finetune", "lambda": lam, "finetune_stage": config.stage,
                "task": task_kind(model), "theta_trains": self.theta_trains, **(run_info or {})}
        super().__init__(model, chain, train_data, val_data, out_dir, config, run_info=info)
        self.theta_optimizer: torch.optim.Optimizer | None = None
        if self.theta_trains:
            self.model.requires_grad_(True)
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.theta_optimizer = torch.optim.Adam(params, lr=config.theta_lr)

    # -- checkpoints carry θ and its optimiser --------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        if self.theta_optimizer is None:
            return {}
        return {"forward_model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "forward_optimizer": self.theta_optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.theta_optimizer is not None and state:
            self.model.load_state_dict(state["forward_model"])
            self.theta_optimizer.load_state_dict(state["forward_optimizer"])

    # -- the step ---------------------------------------------------------------------------------
    def forward_trace(self, images: Tensor, grad: bool) -> Trace:
        """The forward pass, with gradients into θ when ``grad`` (else frozen and detached), up to
        the last stage when L_OBJ is needed, else up to the inverted stage."""
        images = images.to(self.device, non_blocking=True)
        end = self.model.stages[-1] if self.task_weight > 0 else self.stage
        if grad:
            with autocast(self.device, self.amp):
                return self.model.trace(images, end=end)
        with torch.no_grad(), autocast(self.device, self.amp):
            return self.model.trace(images, end=end).detach()

    def losses(self, trace: Trace, targets: Any = None, training: bool = True) -> dict[str, Tensor]:
        """``{"mse", "task", "total"}`` of Eq. 3 on a trace (``task`` only with ``targets``;
        ``top1`` too for classifiers); ``total`` is what is back-propagated: L_MSE, whose gradient
        reaches x_j (hence θ) scaled by λ and φ at weight 1, + (1-λ)·L_OBJ."""
        x = trace[self.stage]
        if self.lam == 0 or not self.theta_trains:
            x = x.detach()
        elif self.lam < 1:
            x = scale_gradient(x, self.lam)
        with autocast(self.device, self.amp):
            for stage in classic_path(self.model, self.stage):  # chain.reconstruct, via the training modules
                module = self.train_modules[stage] if training else self.chain.components[stage]
                x = module(x, trace.context)
        mse = F.mse_loss(x.float(), trace[IMAGE].float())
        out = {"mse": mse, "total": mse}
        if targets is not None:
            with autocast(self.device, self.amp):
                output = self.model.output(trace)
            out["task"] = task_loss(self.model, output, targets)
            if isinstance(targets, Tensor) and isinstance(output, Tensor):
                out["top1"] = (output.argmax(-1) == targets).float().mean()
            if self.task_weight > 0:
                out["total"] = mse + self.task_weight * out["task"]
        return out

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        images = batch["image"]
        if self.theta_trains:
            set_forward_mode(self.model, self.config.forward_mode)
        else:
            self.model.eval()
        trace = self.forward_trace(images, grad=self.theta_trains)
        targets = batch_targets(self.model, batch, self.device) if self.task_weight > 0 else None
        for stage in self.stages:
            self.chain.components[stage].train()
            self.optimizers[stage].zero_grad(set_to_none=True)
        if self.theta_optimizer is not None:
            self.theta_optimizer.zero_grad(set_to_none=True)
        losses = self.losses(trace, targets)
        losses["total"].backward()
        norms = {s: torch.nn.utils.clip_grad_norm_(self.chain.components[s].parameters(), self.config.grad_clip)
                 for s in self.stages}
        if self.theta_optimizer is not None:
            norms["forward model"] = torch.nn.utils.clip_grad_norm_(
                [p for g in self.theta_optimizer.param_groups for p in g["params"]], self.config.grad_clip
            )
        loss = losses["total"]
        if bool(torch.isfinite(loss)) and all(bool(torch.isfinite(n)) for n in norms.values()):
            for stage in self.stages:
                self.optimizers[stage].step()
                self.nonfinite[stage] = 0
            if self.theta_optimizer is not None:
                self.theta_optimizer.step()
        else:
            for optimizer in [*self.optimizers.values(), *([self.theta_optimizer] if self.theta_optimizer else [])]:
                optimizer.zero_grad(set_to_none=True)
            self._skip_update(self.stage, float(loss), float(torch.stack([n.float() for n in norms.values()]).norm()))
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- validation and outputs -------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation value of Eq. 3 ((1+λ)·MSE + (1-λ)·L_OBJ, MSE alone where θ is frozen) for
        every component (one snapshot); its parts go to the log as ``validation_parts``."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        from modinv.data import make_loader

        self.model.eval()
        for stage in self.stages:
            self.chain.components[stage].eval()
        sums: dict[str, float] = {}
        count = 0
        loader = make_loader(self.val_data, batch_size=self.config.batch_size, shuffle=False)
        for i, batch in enumerate(loader):
            if i >= self.config.val_batches:
                break
            images = batch["image"]
            if not images.shape[0]:
                continue
            targets = batch_targets(self.model, batch, self.device) if self.task_weight > 0 else None
            images = images.to(self.device)
            with autocast(self.device, self.amp):
                trace = self.model.trace(images, end=None if targets is not None else self.stage)
            parts = self.losses(trace, targets, training=False)
            for key, value in parts.items():
                if key != "total":
                    sums[key] = sums.get(key, 0.0) + float(value) * images.shape[0]
            count += images.shape[0]
        if count == 0:
            return {}
        means = {k: v / count for k, v in sums.items()}
        objective = (1.0 + self.lam) * means["mse"] if self.theta_trains else means["mse"]
        if "task" in means and self.task_weight > 0:
            objective += self.task_weight * means["task"]
        self.out.mkdir(parents=True, exist_ok=True)
        self._log({"step": self.step, "event": "validation_parts", "image_mse": means["mse"],
                   **{k: v for k, v in means.items() if k != "mse"}, "objective": objective})
        return {s: objective for s in self.stages}

    def on_best(self, improved: list[str]) -> None:
        self.save_forward(self.out / "best" / FORWARD_WEIGHTS_FILE)

    def save_forward(self, path: str | os.PathLike) -> Path:
        """The forward weights as a safetensors state dict ``load_model(..., weights=PATH)`` reads."""
        return save_forward_weights(self.model, path, metadata={
            "training": "finetune", "lambda": repr(self.lam), "stage": self.stage, "step": str(self.step),
            "start_weights": str(self.chain.layout.get("start_weights")),
        })

    def _training_info(self) -> dict[str, dict[str, Any]]:
        info = super()._training_info()
        extra = {"method": "finetune", "lambda": self.lam, "finetune_stage": self.stage,
                 "theta_lr": self.config.theta_lr if self.theta_trains else None,
                 "forward_mode": self.config.forward_mode if self.theta_trains else "eval (frozen)",
                 "zero_lambda": self.config.zero_lambda}
        return {s: dict(v, **extra) for s, v in info.items()}

    def resume(self) -> bool:
        with warnings.catch_warnings():  # the saved chain names the fine-tuned weights, the model its start
            warnings.simplefilter("ignore", UserWarning)
            return super().resume()

    def fit(self, resume: bool = False, progress: bool = True) -> dict[str, Any]:
        """Train; afterwards ``OUT/best`` holds the chain and ``forward.safetensors``, and the model
        (changed in place) is frozen in eval mode again."""
        try:
            result = super().fit(resume=resume, progress=progress)
            if not self.best:  # no validation: the final weights are the result
                self.save_forward(self.out / "best" / FORWARD_WEIGHTS_FILE)
        finally:
            self.model.freeze()
        return result
