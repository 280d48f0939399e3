"""The one training engine: every training run of modinv (modular, classic, λ fine-tuning, the demo).

The :class:`Engine` runs the loop an :class:`~modinv.training.objective.Objective` plugs into: a
resumable seeded data order, per-component Adam optimisers with gradient clipping, non-finite
updates skipped (BatchNorm statistics restored), validation and best-keeping per component,
crash-safe checkpoints and bit-identical resume, a time budget, and DDP under ``torchrun``.

A run folder holds ``config.json``, ``log.jsonl`` (one JSON record per logged step, validation,
skipped update, skipped image file, resume and the stop, with its reason), ``best/`` (each
component at its lowest validation loss, an :class:`InverseChain` folder; the final weights without
validation data) and ``checkpoints/`` (the latest resumable state). :meth:`Engine.fit` refuses a
folder that holds another run or is in use (:mod:`modinv.training.run_folder`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from modinv.data import make_loader
from modinv.distributed import SINGLE, DistContext
from modinv.errors import ModinvError, Terminated
from modinv.fileio import append_jsonl
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel, Trace
from modinv.runtime import (amp_dtype, autocast, conv_memory_format, deferred_termination, reuse_freed_memory,
                            termination_requested)
from modinv.training import checkpoint as ckpt
from modinv.training.config import TrainConfig
from modinv.training.data import set_data_epoch, usable_batches
from modinv.training.objective import Objective, Update
from modinv.training.optim import default_learning_rate, make_optimizer
from modinv.training.parallel import mean_over_processes, replica_checksums, wrap_for_training
from modinv.training.run_folder import describe_changes, open_run_folder, write_run_config
from modinv.training.sampling import EpochSampler


def _has_trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class Engine:
    """Train the components of ``chain`` for ``model`` with ``objective`` on an image data set.

    ``objective`` defaults to ``objective_class.from_config(config)`` (the trainer subclasses set
    ``objective_class``). ``on_record`` is called with every log record (on the main process).
    After :meth:`fit`: ``step``, ``epoch``, ``stop_reason`` ("step limit", "time budget" or
    "interrupt") and ``seconds`` (training time of that call).
    """

    objective_class: type[Objective] | None = None

    def __init__(self, model: StagedModel, chain: InverseChain, train_data: Dataset, val_data: Dataset | None,
                 out_dir: str | Path, config: TrainConfig, objective: Objective | None = None,
                 run_info: dict[str, Any] | None = None, dist: DistContext = SINGLE,
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> None:
        config.check()
        if config.batch_size % dist.world_size:
            raise ModinvError(
                f"batch {config.batch_size} does not split evenly over {dist.world_size} processes; "
                "--batch is the global batch size"
            )
        if objective is None:
            if self.objective_class is None:
                raise ModinvError("an Engine needs an objective")
            objective = self.objective_class.from_config(config)
        self.dist, self.rank_batch = dist, config.batch_size // dist.world_size
        self.model, self.chain, self.config = model.freeze(), chain, config
        self.device, self.out = model.device, Path(out_dir)
        self.run_info, self.on_record = run_info or {}, on_record
        self.objective = objective
        objective.prepare(self)
        self.stages = config.trained_stages([s for s in chain.components if _has_trainable(chain.components[s])])
        if val_data is not None and len(val_data) == 0:
            raise ModinvError("the validation data set is empty; give one with images, or none to train without")
        self.chain.to(self.device)
        self.amp = amp_dtype(self.device, config.amp)
        self.train_data, self.val_data = train_data, val_data
        self.sampler = EpochSampler(len(train_data), seed=config.seed, rank=dist.rank, world_size=dist.world_size)
        self.lrs = {s: config.lr.get(s, default_learning_rate(model, s, chain.components[s])) for s in self.stages}
        self.optimizers = {s: make_optimizer(chain.components[s], self.lrs[s]) for s in self.stages}
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, dict[str, Any]] = {}
        self.nonfinite = {s: 0 for s in self.stages}
        self.best_chain = copy.deepcopy(chain).cpu()
        self.frozen_model = self._frozen_form(model, config.channels_last)
        self.train_modules = {s: wrap_for_training(chain.components[s], self.device, dist, config.channels_last,
                                                   config.compile, amp=self.amp) for s in self.stages}
        self.stop_reason: str | None = None
        self._skipped_logged: set[tuple[str, str]] = set()  # (kind of pass, path) already logged
        self._resume_changes: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0
        self._started = time.perf_counter()
        self._bar: Any = None

    def _frozen_form(self, model: StagedModel, channels_last: bool) -> StagedModel:
        """The model that computes the frozen forward passes: a copy cast once to the run's
        precision, its convolutions in the device's fast layout (``model`` itself is left as it is),
        or ``model`` when that changes nothing or when the objective trains it (its θ must be current)."""
        layout = conv_memory_format(self.device, self.amp) if channels_last else torch.contiguous_format
        if any(p.requires_grad for p in model.parameters()) or (self.amp is None and layout == torch.contiguous_format):
            return model
        return model.fast_copy(self.amp, layout)

    # -- pieces the objectives use -----------------------------------------------------------------
    def frozen_trace(self, images: Tensor, end: str | None = None) -> Trace:
        """The frozen forward pass of a batch (up to ``end``), without gradients, in the run's precision
        (stages come in the compute dtype, the image as given)."""
        with torch.no_grad(), autocast(self.device, self.amp):
            return self.frozen_model.trace(images.to(self.device, non_blocking=True), end=end).detach()

    def module(self, stage: str, training: bool = True) -> torch.nn.Module:
        """The component of ``stage``: as the training step calls it (DDP-wrapped, compiled as
        configured) or, for validation, the chain's own module."""
        return self.train_modules[stage] if training else self.chain.components[stage]

    def autocast(self) -> ContextManager:
        """Autocast in the run's training precision."""
        return autocast(self.device, self.amp)

    def image_mse(self, prediction: Tensor, images: Tensor) -> Tensor:
        """MSE (float32) of a reconstructed image against the [0, 1] image, in the run's
        ``image_loss_space``: ``"normalized"`` compares both after the model's input normalisation."""
        prediction, images = prediction.float(), images.float()
        if self.config.image_loss_space == "normalized":
            prediction, images = self.model.normalize(prediction), self.model.normalize(images)
        return F.mse_loss(prediction, images)

    # -- bookkeeping -------------------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        per_rank = self.sampler.per_rank
        return per_rank // self.rank_batch if self.config.drop_last else math.ceil(per_rank / self.rank_batch)

    @property
    def total_steps(self) -> int | None:
        """Steps of the whole run; None when only the time budget ends it."""
        if self.config.steps is not None:
            return self.config.steps
        return None if self.config.epochs is None else self.config.epochs * self.batches_per_epoch

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * self.rank_batch)
        set_data_epoch(self.train_data, self.epoch)
        return make_loader(self.train_data, batch_size=self.rank_batch, sampler=self.sampler,
                           num_workers=self.config.num_workers, drop_last=self.config.drop_last)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        append_jsonl(self.out / "log.jsonl", record)
        if self.on_record is not None:
            self.on_record(record)

    def _usable(self, loader: DataLoader, kind: str) -> Iterator[dict[str, Any]]:
        """The batches of ``loader`` that hold images; every file the loader skipped is logged
        (event ``skipped_file``, once per run and ``kind`` of pass; the loader summarises each pass)."""

        def log(path: str, reason: str) -> None:
            if (kind, path) not in self._skipped_logged:
                self._skipped_logged.add((kind, path))
                self._log({"step": self.step, "event": "skipped_file", "pass": kind, "path": path, "reason": reason})

        return usable_batches(loader, log)

    def _config_record(self) -> dict[str, Any]:
        """What ``config.json`` records: the settings that decide the run."""
        return {
            "model": self.model.name,
            "weights": self.model.weights,
            "stages": self.stages,
            "learning_rates": self.lrs,
            "amp": str(self.amp) if self.amp else "off",
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "train": self.config.to_dict(),
            **self.objective.run_info(),
            **self.run_info,
        }

    def _write_config(self) -> None:
        if self.dist.is_main:
            write_run_config(self.out, self._config_record())

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimisation step on a collated batch: every update of the objective, in order."""
        losses: dict[str, Tensor] = {}
        for update in self.objective.updates(batch):
            losses.update(self._apply(update))
        # Read back once, after every update is queued: a read per update would make an accelerator
        # finish each optimiser step before the next component's forward could be queued.
        return {k: float(v) for k, v in losses.items()}

    def _apply(self, update: Update) -> dict[str, Tensor]:
        components = [self.chain.components[s] for s in update.stages]
        for component in components:
            component.train(self.config.component_mode == "train")
        # Running statistics (BatchNorm) change in the forward pass itself; keep a copy so a
        # skipped update can also undo what a non-finite input did to them.
        buffers = [b for m in [*components, *update.modules] for b in m.buffers()]
        saved = [b.detach().clone() for b in buffers]
        optimizers = {**{s: self.optimizers[s] for s in update.stages}, **update.optimizers}
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss, logged = update.compute()
        loss.backward()
        groups = [[p for g in o.param_groups for p in g["params"]] for o in optimizers.values()]
        if self.config.joint_clip:
            groups = [[p for group in groups for p in group]]
        norms = [torch.nn.utils.clip_grad_norm_(group, self.config.grad_clip) for group in groups]
        # Decided on the gradients, which DDP averages over processes: every rank decides alike.
        finite = all(bool(torch.isfinite(n)) for n in norms) and (self.dist.enabled or bool(torch.isfinite(loss)))
        if finite:
            for optimizer in optimizers.values():
                optimizer.step()
            for stage in update.stages:
                self.nonfinite[stage] = 0
        else:
            with torch.no_grad():
                for buffer, copy_ in zip(buffers, saved):
                    buffer.copy_(copy_)
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            norm = torch.stack([n.detach().float().cpu() for n in norms]).norm()
            self._skip_update(update.name, float(loss.detach()), float(norm))
        return {k: v.detach() for k, v in logged.items()}

    def _skip_update(self, stage: str, loss: float, grad_norm: float) -> None:
        self.nonfinite[stage] += 1
        message = f"step {self.step}: non-finite loss/gradient for {stage}⁻¹ (loss {loss}, grad norm {grad_norm}); update skipped"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        self._log({"step": self.step, "event": "nonfinite", "stage": stage, "loss": loss, "grad_norm": grad_norm})
        if self.nonfinite[stage] >= self.config.max_nonfinite:
            raise ModinvError(
                f"{stage}⁻¹ produced non-finite losses or gradients {self.nonfinite[stage]} steps in a row; "
                "lower its learning rate (--lr) or check the data"
            )

    # -- validation and best-keeping ---------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation loss per trained component over (at most ``val_batches``) validation batches."""
        return self._validation()[0]

    @torch.no_grad()
    def _validation(self) -> tuple[dict[str, float], dict[str, float], int]:
        """``(loss per stage, further numbers, files skipped)``; one sentence when no image was usable."""
        if self.val_data is None:
            return {}, {}, 0
        # Each process scores its own share of the validation items; the sums are reduced.
        n = min(len(self.val_data), self.config.val_batches * self.config.batch_size)
        mine = Subset(self.val_data, list(range(self.dist.rank, n, self.dist.world_size)))
        self.model.eval()
        for stage in self.stages:
            self.chain.components[stage].eval()
        names = self.objective.metric_names
        sums = torch.zeros(len(names) + 2, dtype=torch.float64, device=self.device)  # ..., files read, images
        loader = make_loader(mine, batch_size=self.rank_batch, shuffle=False)
        for batch in self._usable(loader, "validation"):
            metrics, size = self.objective.validation_metrics(batch), batch["image"].shape[0]
            for i, name in enumerate(names):
                sums[i] += float(metrics[name]) * size
            sums[-1] += size
        sums[-2] += loader.seen
        sums = self.dist.all_reduce_sum(sums)
        seen, count = int(sums[-2]), float(sums[-1])
        if count == 0:  # never a loss of 0 nor a silent no-op
            example = "".join(f", e.g. {p}: {r}" for p, r in list(loader.skipped.items())[:1])
            raise ModinvError(f"the validation data gave no usable image (all {seen} files read were unusable"
                              f"{example}); fix or replace the validation data, or train without it")
        val, parts = self.objective.summarize({name: float(sums[i]) / count for i, name in enumerate(names)})
        return val, parts, seen - int(count)

    def _validate_and_keep_best(self) -> None:
        val, parts, skipped = self._validation()
        if not val:
            return
        self._log({"step": self.step, "event": "validation", "val_loss": val, **({"parts": parts} if parts else {}),
                   **({"skipped": skipped} if skipped else {})})
        improved = [s for s, v in val.items() if math.isfinite(v) and v < self.best.get(s, {}).get("val_loss", math.inf)]
        for stage in improved:
            self.best[stage] = {"val_loss": val[stage], "step": self.step}
            state = {k: v.detach().cpu() for k, v in self.chain.components[stage].state_dict().items()}
            self.best_chain.components[stage].load_state_dict(state)
        if improved and self.dist.is_main:
            self._save_best()

    def _save_best(self) -> None:
        self.best_chain.save(self.out / "best", metrics=self._metrics(), training=self._training_info())
        self.objective.on_best(self.out / "best")

    def _metrics(self) -> dict[str, Any]:
        return {s: dict(v) for s, v in self.best.items()}

    def _training_info(self) -> dict[str, dict[str, Any]]:
        """Per trained component: how long it trained (untrained components get nothing)."""
        info = {"steps": self.step, "epochs": self.step / max(self.batches_per_epoch, 1), "seed": self.config.seed,
                "batch_size": self.config.batch_size, "recipe": self.config.recipe,
                "image_loss_space": self.config.image_loss_space, **self.objective.training_info()}
        return {s: dict(info, lr=self.lrs[s]) for s in self.stages}

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            self.dist.barrier()
            return
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "stages": self.stages,
            "optimizers": {s: o.state_dict() for s, o in self.optimizers.items()},
            "best": self.best,
            "nonfinite": self.nonfinite,
            "torch_rng": torch.get_rng_state(),
            "extra": self.objective.state_dict(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        ckpt.write_checkpoint(self.out / "checkpoints", self.step, lambda folder: self.chain.save(
            folder, metrics=self._metrics(), training=self._training_info()), state)
        self.dist.barrier()

    def _load_chain(self, folder: Path) -> InverseChain:
        """A chain this run saved. Its weights entry is this run's own (a fine-tuning run names its
        fine-tuned weights), so it is compared with the chain's, not with the model's start weights."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            saved = InverseChain.load(folder, self.model, map_location=self.device)
        theirs, mine = saved.layout.get("weights"), self.chain.layout.get("weights")
        if theirs != mine:
            warnings.warn(f"the chain in {str(folder)!r} was trained on weights {theirs!r}, this run uses {mine!r}",
                          stacklevel=3)
        return saved

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
        self.chain.load_state_dict(self._load_chain(folder / "chain").state_dict())
        for s, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][s])
            for group in o.param_groups:  # this run's rate (a resume may change it), not the checkpoint's
                group["lr"] = self.lrs[s]
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.nonfinite = state["best"], state["nonfinite"]
        self.objective.load_state_dict(state.get("extra", {}))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if (self.out / "best").is_dir():
            self.best_chain.load_state_dict(self._load_chain(self.out / "best").state_dict())
        self._log({"step": self.step, "event": "resumed", "from": folder.name})
        return True

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, progress: bool = True, overwrite: bool | None = None) -> dict[str, Any]:
        """Train until the steps/epochs are done or the time budget is spent; returns the best
        validation losses per component (``{stage: {"val_loss", "step"}}``).

        The run folder is locked while the run writes into it. A folder that holds another run is
        refused unless ``resume`` (continue from its latest checkpoint; changed settings are
        refused or, where allowed, applied and logged) or ``overwrite`` (default
        ``config.overwrite``: the previous run's files are removed first).
        """
        overwrite = self.config.overwrite if overwrite is None else overwrite
        lock, self._resume_changes, removed = open_run_folder(self.out, resume, overwrite, self._config_record(),
                                                              self.dist, self.device)
        try:
            return self._fit(resume, progress, removed)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, resume: bool, progress: bool, removed: list[str]) -> dict[str, Any]:
        if removed:
            self._log({"step": 0, "event": "overwrote", "removed": removed})
        # Anything random in training (dropout, ...) draws from torch's generator: a run is
        # reproducible from its seed; a resumed run restores the generator saved with the checkpoint.
        torch.manual_seed(self.config.seed)
        if resume:
            self.resume()
            if self._resume_changes:
                warnings.warn(describe_changes(self._resume_changes), stacklevel=3)
                self._log({"step": self.step, "event": "settings_changed", "changes": self._resume_changes})
        self._write_config()
        self._bar = tqdm(total=self.total_steps, initial=self.step, disable=not (progress and self.dist.is_main),
                         desc="train", unit="step")
        self._started, first = time.perf_counter(), self.step
        self.stop_reason = self._stop_reason()
        try:
            # SIGTERM: stop after the step in progress, checkpoint written
            with deferred_termination(), reuse_freed_memory(self.device, self.config.reuse_memory):
                self._loop()
        except KeyboardInterrupt:
            if not self.config.stop_on_interrupt or self.step == first:
                raise
            self.stop_reason, self.seconds = "interrupt", time.perf_counter() - self._started
            self._validate_and_keep_best()  # the interrupted step may be half-applied: no checkpoint
        finally:
            self._bar.close()
            self.model.freeze()
        if not self.best and self.dist.is_main:  # no validation: the final weights are the result
            self.best_chain.load_state_dict({k: v.cpu() for k, v in self.chain.state_dict().items()})
            self._save_best()
        self._log({"step": self.step, "event": "stopped", "reason": self.stop_reason, "time": self.seconds})
        if self.dist.enabled:
            sums = replica_checksums({s: self.chain.components[s] for s in self.stages}, self.dist, self.device)
            self._log({"step": self.step, "event": "replica_checksums", "checksums": sums})
        if self.stop_reason == "terminated":
            raise Terminated(f"training stopped after step {self.step} with its checkpoint written; continue "
                             f"with --resume (--out {self.out})")
        return self._metrics()

    def _loop(self) -> None:
        while self.stop_reason is None:
            seen = 0
            for batch in self._usable(self._loader(), "train"):
                seen += 1
                losses = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                self._bar.update(1)
                self.stop_reason = self._stop_reason()
                self._after_step(losses, final=self.stop_reason is not None)
                if self.stop_reason is not None:
                    break
            else:
                if seen == 0 and self.batch_in_epoch == 0:
                    raise ModinvError("the training data yielded no usable images")
                self.epoch += 1
                self.batch_in_epoch = 0

    def _stop_reason(self) -> str | None:
        """Why training stops after the current step, or None. Every process decides alike."""
        self.seconds = time.perf_counter() - self._started
        if self._terminated():
            return "terminated"
        total = self.total_steps
        if total is not None and self.step >= total:
            return "step limit"
        if self.config.max_seconds is None:
            return None
        over = self.seconds >= self.config.max_seconds
        if self.dist.enabled:  # clocks differ: stop when any process is over
            over = float(self.dist.all_reduce_sum(torch.tensor([float(over)], device=self.device))[0]) > 0
        return "time budget" if over else None

    def _terminated(self) -> bool:
        """Whether SIGTERM arrived (at any process, under DDP: every process stops alike)."""
        asked = termination_requested()
        if self.dist.enabled:
            asked = float(self.dist.all_reduce_sum(torch.tensor([float(asked)], device=self.device))[0]) > 0
        return asked

    def _after_step(self, losses: dict[str, float], final: bool) -> None:
        cfg = self.config
        if self.step % cfg.log_every == 0 or final:
            losses = mean_over_processes(losses, self.dist, self.device)
            self._bar.set_postfix({s: f"{v:.4f}" for s, v in losses.items()})
            self._log({"step": self.step, "epoch": self.epoch, "loss": losses, "loss_space": cfg.image_loss_space,
                       "time": time.perf_counter() - self._started})
        if self.step % cfg.val_every == 0 or final:
            self._validate_and_keep_best()
        if self.step % cfg.checkpoint_every == 0 or final:
            self.save_checkpoint()
