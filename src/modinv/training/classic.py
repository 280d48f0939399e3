"""The classic full-path baseline (Dosovitskiy & Brox 2016; paper Section 4.2).

For a chosen stage j, a freshly initialised chain j -> img made of the same component
architectures as the modular chain (``InverseChain.build(model, stages=path)``) is trained
end-to-end on the image MSE only: ``MSE(N⁻¹_{1}(… N⁻¹_{j}(x_j)), x_0)`` in [0, 1] pixel space. The
gradient of that one loss flows through every component j..1; intermediate outputs are *not*
matched to the forward model's representations (that is the modular approach).

Optimisers (a choice the paper leaves open): one Adam per component with that component's own
paper learning rate (DETR bb⁻¹ 1e-3, enc⁻¹ 1e-3, dec⁻¹ 1e-4, pred⁻¹ 1e-3; ViT bb⁻¹ 1e-3,
enc⁻¹ 1e-4; ``--lr STAGE=LR`` overrides) and its own gradient-norm clip (1.0), all stepped after
the single backward pass. A component thus trains at the rate it trains at in the modular chain,
and the modular trainer's per-component checkpointing and resume apply unchanged.

The saved chain (``OUT/best``) is an ordinary :class:`InverseChain` folder holding the components
j..1; it loads, reconstructs and evaluates like a modular chain. Its manifest says
``"training": "classic"`` and ``"classic_stage": j``; only reconstructions from j are what was
trained (the sub-chains from earlier stages were never trained on their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.runtime import autocast
from modinv.training.modular import ModularTrainer, TrainConfig, image_batches

__all__ = ["ClassicConfig", "ClassicTrainer", "build_classic_chain", "classic_path"]


def classic_path(model: StagedModel, stage: str) -> list[str]:
    """The stages whose components form the classic inverse of ``stage``: ``[stage, ..., first]``."""
    index = model.stage_index(stage)
    if stage == IMAGE:
        raise ModinvError(f"{IMAGE!r} is the image; a classic inverse starts at one of {', '.join(model.stages)}")
    return list(model.all_stages[1 : index + 1])[::-1]


def build_classic_chain(model: StagedModel, stage: str, arch: str = "default", seed: int = 0,
                        variants: Mapping[str, str] | None = None) -> InverseChain:
    """A freshly initialised chain ``stage -> img`` (components of :func:`classic_path`), marked as
    classic in its layout so that its manifest records ``"training": "classic"`` and the stage."""
    path = classic_path(model, stage)
    variants = {k: v for k, v in (variants or {}).items() if k in path}
    chain = InverseChain.build(model, arch=arch, seed=seed, stages=path, variants=variants)
    chain.layout["training"] = "classic"
    chain.layout["classic_stage"] = stage
    return chain


@dataclass
class ClassicConfig(TrainConfig):
    """:class:`TrainConfig` plus the stage j the classic chain inverts (to the image)."""

    stage: str = ""


class ClassicTrainer(ModularTrainer):
    """Train a classic chain ``stage -> img`` end-to-end on image MSE.

    Everything but the step and the validation is the :class:`ModularTrainer`'s: data order,
    logging, checkpoints, resume, keeping the best chain (``OUT/best``). The validation loss of
    every component is the chain's image MSE from ``stage``, so the best chain is one consistent
    snapshot.
    """

    def __init__(self, model: StagedModel, chain: InverseChain, train_data: Dataset, val_data: Dataset | None,
                 out_dir, config: ClassicConfig, run_info: dict[str, Any] | None = None,
                 dist: DistContext = SINGLE) -> None:
        if not config.stage:
            raise ModinvError("a classic run needs the stage to invert (config.stage)")
        self.stage = config.stage
        self.path = path = classic_path(model, config.stage)
        missing = [s for s in path if s not in chain.components]
        if missing:
            raise ModinvError(
                f"the classic inverse of {config.stage!r} needs components for {', '.join(path)}; the chain lacks "
                f"{', '.join(missing)} (build it with build_classic_chain)"
            )
        extra = [s for s in chain.stages if s not in path]
        if extra:
            raise ModinvError(
                f"the classic chain of {config.stage!r} holds only {', '.join(path)}, not {', '.join(extra)}"
            )
        if config.stages is not None and sorted(config.stages) != sorted(path):
            raise ModinvError(f"a classic run trains all of {', '.join(path)} together; do not pick stages")
        chain.layout["training"] = "classic"
        chain.layout["classic_stage"] = config.stage
        super().__init__(model, chain, train_data, val_data, out_dir, config,
                         run_info={"training": "classic", "classic_stage": config.stage, **(run_info or {})}, dist=dist)

    # -- the loss -------------------------------------------------------------------------------
    def stage_trace(self, images: Tensor) -> Trace:
        """The frozen forward pass up to the inverted stage (no gradient into the model)."""
        with torch.no_grad(), autocast(self.device, self.amp):
            return self.model.trace(images.to(self.device, non_blocking=True), end=self.stage).detach()

    def image_loss(self, trace: Trace, training: bool = True) -> Tensor:
        """Image MSE in [0, 1] pixel space of the whole chain from ``stage`` (``chain.reconstruct``
        through the training modules: DDP-wrapped/compiled as the modular trainer prepares them)."""
        x = trace[self.stage]
        with autocast(self.device, self.amp):
            for stage in self.path:
                module = self.train_modules[stage] if training else self.chain.components[stage]
                x = module(x, trace.context)
        return F.mse_loss(x.float(), trace[IMAGE].float())

    def train_step(self, images: Tensor) -> dict[str, float]:
        """One end-to-end step: one backward pass of the image MSE through components j..1, then
        every component's optimiser steps (each clipped on its own)."""
        trace = self.stage_trace(images)
        for stage in self.stages:
            self.chain.components[stage].train()
            self.optimizers[stage].zero_grad(set_to_none=True)
        loss = self.image_loss(trace)
        loss.backward()
        norms = {s: torch.nn.utils.clip_grad_norm_(self.chain.components[s].parameters(), self.config.grad_clip)
                 for s in self.stages}
        # decided on the gradients alone: under DDP they are averaged, so every process agrees
        if all(bool(torch.isfinite(n)) for n in norms.values()):
            for stage in self.stages:
                self.optimizers[stage].step()
                self.nonfinite[stage] = 0
        else:
            for stage in self.stages:
                self.optimizers[stage].zero_grad(set_to_none=True)
            self._skip_update(self.stage, float(loss), float(torch.stack(list(norms.values())).norm()))
        return {f"{self.stage}->img": float(loss.detach())}

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Image MSE from ``stage`` over (at most ``val_batches``) validation batches, reported for
        every component of the chain (they are kept as one snapshot)."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        from modinv.data import make_loader

        # as the modular trainer: each process scores its share of the batches, the sums are reduced
        n = min(len(self.val_data), self.config.val_batches * self.config.batch_size)
        mine = Subset(self.val_data, list(range(self.dist.rank, n, self.dist.world_size)))
        loader = make_loader(mine, batch_size=self.rank_batch, shuffle=False)
        for stage in self.stages:
            self.chain.components[stage].eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for images in image_batches(loader):
            sums[0] += float(self.image_loss(self.stage_trace(images), training=False)) * images.shape[0]
            sums[1] += images.shape[0]
        sums = self.dist.all_reduce_sum(sums)
        if float(sums[1]) == 0:
            return {}
        mse = float(sums[0]) / float(sums[1])
        return {s: mse for s in self.stages}

    def _training_info(self) -> dict[str, dict[str, Any]]:
        info = super()._training_info()
        return {s: dict(v, method="classic", classic_stage=self.stage) for s, v in info.items()}
