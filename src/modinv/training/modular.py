"""The modular trainer (Eq. 1): one frozen forward pass per batch feeds every inverse component.

Component j learns ``N⁻¹_j(x_j) ≈ x_{j-1}`` with its own loss, optimiser and gradient clipping;
inputs and targets come detached from the frozen model (eval mode, no grad), so components never
see each other's outputs during training.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel, Trace
from modinv.runtime import amp_dtype, autocast
from modinv.training import checkpoint as ckpt
from modinv.training.optim import default_learning_rate, make_optimizer
from modinv.training.sampling import EpochSampler


@dataclass
class TrainConfig:
    """Everything that decides a training run; written to ``config.json`` with the run."""

    stages: list[str] | None = None  # components to train (default: all of the chain)
    steps: int | None = None  # optimisation steps; or
    epochs: int | None = None  # passes over the training data
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
    channels_last: bool = True  # convolutional components on CUDA
    compile: bool = False  # torch.compile each trained component
    max_nonfinite: int = 20  # consecutive skipped updates of one component before the run stops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Batches of a loader built with :func:`modinv.data.make_loader`, without empty ones
    (a batch whose every file was unreadable)."""
    for batch in loader:
        if batch["image"].shape[0]:
            yield batch


def image_batches(loader: DataLoader) -> Iterator[Tensor]:
    """Image tensors of :func:`usable_batches`."""
    for batch in usable_batches(loader):
        yield batch["image"]


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities as JSON null (strict JSON; readable by jq and friends)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _has_trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def set_data_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell an augmenting source (possibly inside a Subset) which epoch it serves: new crops each epoch."""
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
            return
        dataset = getattr(dataset, "dataset", None)


class ModularTrainer:
    """Train the components of ``chain`` for ``model`` on an image data set.

    Writes to ``out_dir``: ``config.json``, ``log.jsonl`` (one JSON record per logged step and per
    validation), ``best/`` (each component at its lowest validation loss, an :class:`InverseChain`
    folder) and ``checkpoints/`` (the latest resumable state).
    """

    def __init__(
        self,
        model: StagedModel,
        chain: InverseChain,
        train_data: Dataset,
        val_data: Dataset | None,
        out_dir: str | Path,
        config: TrainConfig,
        run_info: dict[str, Any] | None = None,
        dist: DistContext = SINGLE,
    ) -> None:
        if (config.steps is None) == (config.epochs is None):
            raise ModinvError("give exactly one of steps or epochs")
        if config.batch_size % dist.world_size:
            raise ModinvError(
                f"batch {config.batch_size} does not split evenly over {dist.world_size} processes; "
                "--batch is the global batch size"
            )
        self.dist = dist
        self.rank_batch = config.batch_size // dist.world_size
        self.model, self.chain, self.config = model.freeze(), chain, config
        self.device = model.device
        self.out = Path(out_dir)
        trainable = [s for s in chain.components.keys() if _has_trainable(chain.components[s])]
        self.stages = list(config.stages or trainable)
        unknown = [s for s in self.stages if s not in trainable]
        if unknown:
            raise ModinvError(
                f"no trainable inverse component for stage(s) {', '.join(unknown)}; "
                f"trainable ones: {', '.join(trainable) or 'none'}"
            )
        self.chain.to(self.device)
        self.amp = amp_dtype(self.device, config.amp)
        self.train_data, self.val_data = train_data, val_data
        self.sampler = EpochSampler(len(train_data), seed=config.seed, rank=dist.rank, world_size=dist.world_size)
        self.lrs = {s: config.lr.get(s, default_learning_rate(model.name, s, chain.components[s])) for s in self.stages}
        self.optimizers = {s: make_optimizer(chain.components[s], self.lrs[s]) for s in self.stages}
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, dict[str, Any]] = {}
        self.nonfinite = {s: 0 for s in self.stages}
        self.best_chain = copy.deepcopy(chain).cpu()
        self.run_info = run_info or {}
        self.train_modules = {s: self._prepare_for_training(chain.components[s]) for s in self.stages}

    def _prepare_for_training(self, component: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: channels-last, compiled and DDP-wrapped as configured.

        Parameters stay those of ``component``, so optimisers, checkpoints and the chain share them.
        """
        has_conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in component.modules())
        if self.config.channels_last and self.device.type == "cuda" and has_conv:
            component.to(memory_format=torch.channels_last)
        module = component
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
                module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if self.device.type == "cuda" else module
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids)
        if self.config.compile:
            module = torch.compile(module)
        return module

    # -- set-up and bookkeeping ------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.sampler.per_rank / self.rank_batch)

    @property
    def total_steps(self) -> int:
        return self.config.steps if self.config.steps is not None else self.config.epochs * self.batches_per_epoch

    def _loader(self) -> DataLoader:
        from modinv.data import make_loader

        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.rank_batch)
        set_data_epoch(self.train_data, self.epoch)
        return make_loader(
            self.train_data,
            batch_size=self.rank_batch,
            sampler=self.sampler,
            num_workers=self.config.num_workers,
        )

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        info = {
            "model": self.model.name,
            "weights": self.model.weights,
            "stages": self.stages,
            "learning_rates": self.lrs,
            "amp": str(self.amp) if self.amp else "off",
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "train": self.config.to_dict(),
            **self.run_info,
        }
        ckpt.atomic_write_json(self.out / "config.json", info)

    # -- one step --------------------------------------------------------------------------------
    def frozen_trace(self, images: Tensor) -> Trace:
        """The one frozen forward pass of a batch, shared by every component."""
        with torch.no_grad(), autocast(self.device, self.amp):
            return self.model.trace(images.to(self.device, non_blocking=True)).detach()

    def component_loss(self, stage: str, trace: Trace, training: bool = True) -> Tensor:
        """Eq. 1 for one component: MSE between N⁻¹_j(x_j) and x_{j-1} (image target in [0, 1])."""
        target = trace[self.model.previous(stage)].float()
        module = self.train_modules[stage] if training else self.chain.components[stage]
        with autocast(self.device, self.amp):
            prediction = module(trace[stage], trace.context)
        return F.mse_loss(prediction.float(), target)

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on a collated batch; subclasses needing labels override this."""
        return self.train_step(batch["image"])

    def train_step(self, images: Tensor) -> dict[str, float]:
        trace = self.frozen_trace(images)
        losses = {}
        for stage in self.stages:
            component, optimizer = self.chain.components[stage], self.optimizers[stage]
            component.train()
            # Running statistics (BatchNorm) change in the forward pass itself; keep a copy so a
            # skipped update can also undo what a non-finite input did to them.
            buffers = [b.detach().clone() for b in component.buffers()]
            loss = self.component_loss(stage, trace)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(component.parameters(), self.config.grad_clip)
            # Gradients are already averaged over processes, so every rank takes the same decision.
            if torch.isfinite(grad_norm):
                optimizer.step()
                self.nonfinite[stage] = 0
            else:
                with torch.no_grad():
                    for buffer, saved in zip(component.buffers(), buffers):
                        buffer.copy_(saved)
                self._skip_update(stage, float(loss.detach()), float(grad_norm))
            losses[stage] = float(loss.detach())
        return losses

    def _skip_update(self, stage: str, loss: float, grad_norm: float) -> None:
        self.optimizers[stage].zero_grad(set_to_none=True)
        self.nonfinite[stage] += 1
        message = f"step {self.step}: non-finite loss/gradient for {stage}⁻¹ (loss {loss}, grad norm {grad_norm}); update skipped"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._log({"step": self.step, "event": "nonfinite", "stage": stage, "loss": loss, "grad_norm": grad_norm})
        if self.nonfinite[stage] >= self.config.max_nonfinite:
            raise ModinvError(
                f"{stage}⁻¹ produced non-finite losses or gradients {self.nonfinite[stage]} steps in a row; "
                "lower its learning rate (--lr) or check the data"
            )

    # -- validation and checkpoints --------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean component loss over (at most ``val_batches``) validation batches."""
        if self.val_data is None or len(self.val_data) == 0:
            return {}
        from modinv.data import make_loader

        # Each process scores its own share of the validation batches; the sums are reduced.
        n = min(len(self.val_data), self.config.val_batches * self.config.batch_size)
        mine = Subset(self.val_data, list(range(self.dist.rank, n, self.dist.world_size)))
        loader = make_loader(mine, batch_size=self.rank_batch, shuffle=False)
        sums = torch.zeros(len(self.stages) + 1, dtype=torch.float64, device=self.device)
        for images in image_batches(loader):
            trace = self.frozen_trace(images)
            for i, stage in enumerate(self.stages):
                self.chain.components[stage].eval()
                sums[i] += float(self.component_loss(stage, trace, training=False)) * images.shape[0]
            sums[-1] += images.shape[0]
        sums = self.dist.all_reduce_sum(sums)
        count = max(float(sums[-1]), 1.0)
        return {s: float(sums[i]) / count for i, s in enumerate(self.stages)}

    def _update_best(self, val: dict[str, float]) -> None:
        improved = [s for s, v in val.items() if math.isfinite(v) and v < self.best.get(s, {}).get("val_loss", math.inf)]
        for stage in improved:
            self.best[stage] = {"val_loss": val[stage], "step": self.step}
            state = {k: v.detach().cpu() for k, v in self.chain.components[stage].state_dict().items()}
            self.best_chain.components[stage].load_state_dict(state)
        if improved and self.dist.is_main:
            self.best_chain.save(self.out / "best", metrics=self._metrics(), training=self._training_info())
            self.on_best(improved)

    def on_best(self, improved: list[str]) -> None:
        """Called (on the main process) after ``best/`` was rewritten for the ``improved`` stages."""

    def extra_state(self) -> dict[str, Any]:
        """More state for checkpoints (tensors and plain types only), restored by :meth:`load_extra_state`."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def _metrics(self) -> dict[str, Any]:
        return {s: dict(v) for s, v in self.best.items()}

    def _training_info(self) -> dict[str, dict[str, Any]]:
        """Per trained component: how long it trained (untrained components get nothing)."""
        info = {"steps": self.step, "epochs": self.step / max(self.batches_per_epoch, 1), "seed": self.config.seed,
                "batch_size": self.config.batch_size}
        return {s: dict(info, lr=self.lrs[s]) for s in self.stages}

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            self.dist.barrier()
            return
        root = self.out / "checkpoints"
        folder = ckpt.new_checkpoint_dir(root, self.step)
        self.chain.save(folder / "chain", metrics=self._metrics(), training=self._training_info())
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stages": self.stages,
            "optimizers": {s: o.state_dict() for s, o in self.optimizers.items()},
            "best": self.best,
            "nonfinite": self.nonfinite,
            "torch_rng": torch.get_rng_state(),
            "extra": self.extra_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        ckpt.save_state(folder, state)
        ckpt.publish(root, folder)
        self.dist.barrier()

    def resume(self) -> bool:
        """Restore the latest checkpoint under ``out_dir``; False when there is none."""
        folder = ckpt.latest(self.out / "checkpoints")
        if folder is None:
            return False
        state = ckpt.load_state(folder)
        if state["stages"] != self.stages:
            raise ModinvError(
                f"the checkpoint in {str(folder)!r} trains stages {state['stages']}, this run {self.stages}; "
                "resume with the same --stages"
            )
        saved = InverseChain.load(folder / "chain", self.model, map_location=self.device)
        self.chain.load_state_dict(saved.state_dict())
        for s, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][s])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.nonfinite = state["best"], state["nonfinite"]
        self.load_extra_state(state.get("extra", {}))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        best_dir = self.out / "best"
        if best_dir.is_dir():
            self.best_chain.load_state_dict(InverseChain.load(best_dir, self.model).state_dict())
        self._log({"step": self.step, "event": "resumed", "from": folder.name})
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True) -> dict[str, Any]:
        """Train until ``steps``/``epochs`` are done; returns the best validation losses."""
        self.out.mkdir(parents=True, exist_ok=True)
        # Anything random in training (dropout, ...) draws from torch's generator: a run is
        # reproducible from its seed; a resumed run restores the generator saved with the checkpoint.
        torch.manual_seed(self.config.seed)
        if resume:
            self.resume()
        self._write_config()
        cfg, total = self.config, self.total_steps
        bar = tqdm(total=total, initial=self.step, disable=not (progress and self.dist.is_main), desc="train", unit="step")
        started = time.perf_counter()
        while self.step < total:
            seen = 0
            for batch in usable_batches(self._loader()):
                seen += 1
                losses = self.train_batch(batch)
                self.step += 1
                self.batch_in_epoch += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    losses = self._mean_over_processes(losses)
                    bar.set_postfix({s: f"{v:.4f}" for s, v in losses.items()})
                    self._log({"step": self.step, "epoch": self.epoch, "loss": losses, "time": time.perf_counter() - started})
                if self.step % cfg.val_every == 0 or self.step == total:
                    val = self.validate()
                    if val:
                        self._log({"step": self.step, "event": "validation", "val_loss": val})
                        self._update_best(val)
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
                if self.step >= total:
                    break
            else:
                if seen == 0 and self.batch_in_epoch == 0:
                    raise ModinvError("the training data yielded no usable images")
                self.epoch += 1
                self.batch_in_epoch = 0
        bar.close()
        if not self.best and self.dist.is_main:  # no validation data: the final weights are the result
            self.best_chain.load_state_dict({k: v.cpu() for k, v in self.chain.state_dict().items()})
            self.best_chain.save(self.out / "best", metrics={}, training=self._training_info())
        if self.dist.enabled:
            self._check_replicas_agree()
        return self._metrics()

    def _mean_over_processes(self, losses: dict[str, float]) -> dict[str, float]:
        if not self.dist.enabled:
            return losses
        values = self.dist.all_reduce_sum(torch.tensor(list(losses.values()), dtype=torch.float64, device=self.device))
        return {s: float(v) / self.dist.world_size for s, v in zip(losses, values)}

    def _check_replicas_agree(self) -> None:
        """Log a checksum of every trained component on every process; DDP keeps them equal."""
        sums = {}
        for stage in self.stages:
            total = sum(float(p.detach().double().sum()) for p in self.chain.components[stage].parameters())
            sums[stage] = self.dist.all_gather_floats(total, self.device)
        self._log({"step": self.step, "event": "replica_checksums", "checksums": sums})
        differing = [s for s, v in sums.items() if max(v) - min(v) > 1e-6 * max(1.0, abs(v[0]))]
        if differing:
            raise ModinvError(f"component weights differ between processes for {', '.join(differing)}")
