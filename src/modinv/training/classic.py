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
and the engine's per-component checkpointing and resume apply unchanged.

The saved chain (``OUT/best``) is an ordinary :class:`InverseChain` folder holding the components
j..1; it loads, reconstructs and evaluates like a modular chain. Its manifest says
``"training": "classic"`` and ``"classic_stage": j``; only reconstructions from j are what was
trained (the sub-chains from earlier stages were never trained on their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from torch import Tensor

from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.training.engine import Engine, TrainConfig
from modinv.training.objective import Objective, Update

__all__ = ["ClassicConfig", "ClassicObjective", "ClassicTrainer", "build_classic_chain", "classic_path",
           "reconstruct_through"]


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


def reconstruct_through(engine: Engine, path: Sequence[str], x: Tensor, trace: Trace, training: bool = True) -> Tensor:
    """``chain.reconstruct`` from ``x`` through the components of ``path`` as the engine calls them
    (DDP-wrapped/compiled while training), in the run's precision."""
    with engine.autocast():
        for stage in path:
            x = engine.module(stage, training)(x, trace.context)
    return x


@dataclass
class ClassicConfig(TrainConfig):
    """:class:`TrainConfig` plus the stage j the classic chain inverts (to the image)."""

    stage: str = ""


class ClassicObjective(Objective):
    """Image MSE (in the run's image loss space) of the whole chain from ``stage``: one loss, one backward
    pass through components j..1, every component's optimiser stepped (each clipped on its own).
    The validation loss of every component is the chain's image MSE from ``stage``, so the best
    chain is one consistent snapshot."""

    method = "classic"

    def __init__(self, stage: str) -> None:
        if not stage:
            raise ModinvError("a classic run needs the stage to invert (config.stage)")
        self.stage = stage

    @classmethod
    def from_config(cls, config: TrainConfig) -> "ClassicObjective":
        return cls(getattr(config, "stage", ""))

    def prepare(self, engine: Engine) -> None:
        super().prepare(engine)
        chain, stage = engine.chain, self.stage
        self.path = path = classic_path(engine.model, stage)
        missing = [s for s in path if s not in chain.components]
        if missing:
            raise ModinvError(
                f"the classic inverse of {stage!r} needs components for {', '.join(path)}; the chain lacks "
                f"{', '.join(missing)} (build it with build_classic_chain)"
            )
        extra = [s for s in chain.stages if s not in path]
        if extra:
            raise ModinvError(f"the classic chain of {stage!r} holds only {', '.join(path)}, not {', '.join(extra)}")
        if engine.config.stages is not None and sorted(engine.config.stages) != sorted(path):
            raise ModinvError(f"a classic run trains all of {', '.join(path)} together; do not pick stages")
        chain.layout["training"] = "classic"
        chain.layout["classic_stage"] = stage

    def run_info(self) -> dict[str, Any]:
        return {"training": "classic", "classic_stage": self.stage}

    def training_info(self) -> dict[str, Any]:
        return {"method": "classic", "classic_stage": self.stage}

    def image_loss(self, trace: Trace, training: bool = True) -> Tensor:
        """Image MSE of the reconstruction from ``stage``."""
        x = reconstruct_through(self.engine, self.path, trace[self.stage], trace, training)
        return self.engine.image_mse(x, trace[IMAGE])

    def updates(self, batch: Mapping[str, Any]) -> Iterator[Update]:
        trace = self.engine.frozen_trace(batch["image"], end=self.stage)

        def compute() -> tuple[Tensor, dict[str, Tensor]]:
            loss = self.image_loss(trace)
            return loss, {f"{self.stage}->img": loss}

        yield Update(self.stage, list(self.engine.stages), compute)

    @property
    def metric_names(self) -> list[str]:
        return ["image_mse"]

    def validation_metrics(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"image_mse": self.image_loss(self.engine.frozen_trace(batch["image"], end=self.stage), training=False)}

    def summarize(self, means: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        return {s: means["image_mse"] for s in self.engine.stages}, {}


class ClassicTrainer(Engine):
    """Train a classic chain ``config.stage -> img`` end-to-end on image MSE (a :class:`ClassicConfig`;
    see :class:`Engine` for the arguments and the run folder)."""

    objective_class = ClassicObjective
