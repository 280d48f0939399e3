"""Computational efficiency of modular vs classic inversion, measured stage by stage.

    result = measure_efficiency(model, batch=2, steps=1)       # an EfficiencyResult
    print(efficiency_table(result)); efficiency_figure(result, "efficiency.png")

For every stage j of the model, two ways to get an inverse of j:
- **modular**: component j alone (``InverseChain.build(model, stages=[j])``), trained on
  MSE(N⁻¹_j(x_j), x_{j-1}) with x from the frozen model (Eq. 1). Inverting every stage trains each
  component once, and one frozen forward pass per batch feeds all of them.
- **classic**: a freshly initialised path j -> img (components 1..j, ``stages=[j, ..., first]``)
  trained end to end on the image MSE (Dosovitskiy & Brox); every stage needs its own path and
  its own frozen forward pass up to j. For the first stage both are the same inverse with the same
  loss, so it is measured once and reported in both columns.

Per inverse (float32, Adam, grad-norm clip 1.0, the current device):
- ``params``: trainable parameters;
- ``train_flops_per_image``: forward + backward FLOPs of one training step divided by the batch,
  counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and
  attention, 2 FLOPs per multiply-add; element-wise ops, normalisation and the optimizer are not
  counted; the CPU attention kernels get the counter's own attention formulas, which it only
  registers for the CUDA kernels);
- ``seconds_per_step``: median wall time of ``steps`` timed steps (forward, backward, clip, Adam)
  at batch ``batch``, after one untimed step (the counted one);
- ``peak_memory_bytes``: on CUDA, measured: ``torch.cuda.max_memory_allocated`` while building and
  training the inverse, minus what was allocated before (the frozen model and the batch's
  features). On CPU no allocator peak exists (tracemalloc does not see torch's allocations and RSS
  deltas are hidden by the allocator's reuse), so it is an estimate from measured parts: the bytes
  of the parameters, gradients and Adam state after a step plus the tensors autograd saved for
  backward in one forward pass (unique storages, parameters excluded); transient workspaces are
  not included. ``memory_method`` in the JSON says which.
The frozen forward pass (no grad) from the image up to each stage j is counted and timed on its
own: ``frozen_forward[j]`` is the cost of computing x_1..x_j. Totals (``totals()``) for inverting
every measured stage, per training step (the same number of steps for every inverse):
``train_*`` sums the inverses; ``flops_per_image`` and ``seconds_per_step`` add the frozen forward
passes: modular = one to the last stage (it feeds every component), classic = one to j per stage.
Memory totals are given as the largest single run and as the sum of all runs (the modular
components train together in one process, so their states add up; the classic paths are separate
runs).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from modinv.analysis.common import AnalysisResult
from modinv.errors import ModinvError
from modinv.fileio import finite_or_null
from modinv.inverse.chain import InverseChain
from modinv.models.base import IMAGE, StagedModel, Trace

MEMORY_METHODS = {
    "cuda": "measured: torch.cuda.max_memory_allocated while building and training the inverse, minus the "
            "memory allocated before it (frozen model, batch features)",
    "cpu": "estimate: parameter + gradient + Adam-state bytes after a step, plus the tensors autograd saved "
           "for backward in one forward pass (unique storages); transient workspaces not included",
}
FLOP_METHOD = ("torch.utils.flop_counter.FlopCounterMode (+ its attention formulas for the CPU attention kernels): "
               "matrix products, convolutions and attention of one forward + backward step, 2 FLOPs per "
               "multiply-add, divided by the batch size")

__all__ = ["EfficiencyResult", "InverseCost", "efficiency_figure", "efficiency_table", "flop_counter_mode",
           "measure_efficiency", "training_step_cost"]


@dataclass
class InverseCost:
    """What training one inverse (a component, or a classic path) costs per step."""

    stages: list[str]  # the components trained together, from the inverted stage down
    params: int
    train_flops_per_image: float  # forward + backward
    forward_flops_per_image: float
    seconds_per_step: float
    peak_memory_bytes: int


@dataclass
class EfficiencyResult(AnalysisResult):
    """Costs per stage of the modular components and the classic paths, and the frozen forward."""

    model: str
    weights: str
    arch: str
    device: str
    batch: int
    steps: int
    input_size: list[int]
    stages: list[str]
    modular: dict[str, InverseCost]
    classic: dict[str, InverseCost]
    frozen_forward: dict[str, dict[str, float]]  # image -> stage: flops_per_image, seconds_per_step
    memory_method: str
    flop_method: str = FLOP_METHOD
    precision: str = "float32"
    analysis: str = "efficiency"

    def totals(self) -> dict[str, Any]:
        """Cost of inverting every measured stage both ways, per training step (module docstring)."""
        last = self.frozen_forward[self.stages[-1]]
        out = {}
        for way, costs in (("modular", self.modular), ("classic", self.classic)):
            runs = [costs[s] for s in self.stages]
            frozen = ([last] if way == "modular" else [self.frozen_forward[s] for s in self.stages])
            train_flops = sum(c.train_flops_per_image for c in runs)
            frozen_flops = sum(f["flops_per_image"] for f in frozen)
            train_seconds = sum(c.seconds_per_step for c in runs)
            frozen_seconds = sum(f["seconds_per_step"] for f in frozen)
            out[way] = {
                "params": sum(c.params for c in runs),
                "train_flops_per_image": train_flops,  # the inverses' forward + backward
                "frozen_forward_flops_per_image": frozen_flops,
                "flops_per_image": train_flops + frozen_flops,
                "train_seconds_per_step": train_seconds,
                "frozen_forward_seconds_per_step": frozen_seconds,
                "seconds_per_step": train_seconds + frozen_seconds,
                "peak_memory_max_bytes": max(c.peak_memory_bytes for c in runs),
                "peak_memory_sum_bytes": sum(c.peak_memory_bytes for c in runs),
                "frozen_forward_passes": len(frozen),
            }
        m, c = out["modular"], out["classic"]
        out["classic_over_modular"] = {k: (c[k] / m[k] if m[k] else None) for k in
                                       ("params", "flops_per_image", "seconds_per_step")}
        return out

    def to_json(self) -> dict[str, Any]:
        """The numbers as strict-JSON values, with the :meth:`totals`."""
        data = super().to_json()
        for way in ("modular", "classic"):
            data[way] = {s: finite_or_null(asdict(c)) for s, c in getattr(self, way).items()}
        return data | {"totals": finite_or_null(self.totals())}


def _cpu_attention_formulas() -> dict[Any, Any]:
    """FLOP formulas for the CPU kernels of scaled-dot-product attention, which PyTorch's counter
    lacks (it counts the CUDA ones): the same formulas as for the flash kernels, whose arguments
    (query, key, value / grad_out, query, key, value, ...) they share."""
    aten, out = torch.ops.aten, {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop)):
        if hasattr(aten, name):  # the counter wraps custom formulas itself: hand it the unwrapped one
            out[getattr(aten, name)] = getattr(formula, "__wrapped__", formula)
    return out


def flop_counter_mode() -> FlopCounterMode:
    """A silent FLOP counter that also knows the CPU attention kernels (used by the benchmarks too)."""
    return FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _same(t: Tensor) -> Tensor:
    return t


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward (unique storages, ``skip`` storages excluded)."""

    def __init__(self, skip: Sequence[Tensor]) -> None:
        self.seen = {t.untyped_storage().data_ptr() for t in skip}
        self.total = 0

    def pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.total += storage.nbytes()
        return t


def training_step_cost(build: Callable[[], nn.Module], loss_of: Callable[[nn.Module], Tensor],
                       device: torch.device | str, batch: int, steps: int = 1,
                       stages: Sequence[str] = ()) -> InverseCost:
    """Build a module (``build()``), count FLOPs and memory of one untimed training step of
    ``loss_of(module)`` (Adam, grad-norm clip 1.0), then time ``steps`` steps. ``batch``: the
    images per step (FLOPs are reported per image); ``stages``: recorded in the result."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    module = build()
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    saved, flops = _SavedBytes(params), {}

    def step(count: bool = False) -> None:  # count: FLOPs and saved tensors of this step
        optimizer.zero_grad(set_to_none=True)
        with flop_counter_mode() if count else contextlib.nullcontext() as counter:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, _same) if count else contextlib.nullcontext():
                loss = loss_of(module)
            if count:
                flops["forward"] = counter.get_total_flops()
            loss.backward()
            if count:
                flops["total"] = counter.get_total_flops()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    step(count=True)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        state = [v for s in optimizer.state.values() for v in s.values()]
        peak = _bytes(params) + _bytes(p.grad for p in params) + _bytes(state) + saved.total
    cost = InverseCost(list(stages), sum(p.numel() for p in params), flops["total"] / batch,
                       flops["forward"] / batch, statistics.median(times), int(peak))
    del module, optimizer, params
    gc.collect()
    return cost


@torch.no_grad()
def _frozen_forward(model: StagedModel, images: Tensor, steps: int,
                    last: str) -> tuple[Trace, dict[str, dict[str, float]]]:
    """The trace of ``images`` up to ``last`` and, per stage j, the FLOPs per image (counted once)
    and median seconds (``steps`` timings) of the frozen forward pass from the image up to j, each
    run on its own (``model.trace(images, end=j)``: some adapters recompute earlier stages in ``run``)."""
    device, batch = model.device, images.shape[0]
    trace = model.trace(images, end=last)  # untimed warm-up; also the features every inverse trains on
    out = {}
    for stage in model.all_stages[1: model.stage_index(last) + 1]:
        with flop_counter_mode() as counter:
            model.trace(images, end=stage)
        seconds = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            model.trace(images, end=stage)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        out[stage] = {"flops_per_image": counter.get_total_flops() / batch,
                      "seconds_per_step": statistics.median(seconds)}
    return trace.detach(), out


def measure_efficiency(model: StagedModel, stages: Sequence[str] | None = None, batch: int = 2, steps: int = 1,
                       arch: str = "default", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> EfficiencyResult:
    """Parameters, training FLOPs per image, seconds per step and peak memory of the modular
    component and the classic path of every stage in ``stages`` (default: all), on random images
    at the model's input size on the model's device (see the module docstring)."""
    if batch < 1 or steps < 1:
        raise ModinvError(f"batch and steps must be at least 1, got batch={batch}, steps={steps}")
    chosen = list(model.stages) if stages is None else [s for s in model.stages if s in set(stages)]
    unknown = sorted(set(stages or ()) - set(model.stages))
    if unknown or not chosen:
        raise ModinvError(f"unknown stage(s) {', '.join(unknown) or '(none)'} for model {model.name!r}; "
                          f"valid stages: {', '.join(model.stages)}")
    say = progress or (lambda _: None)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *model.input_size, generator=generator).to(device)
    say(f"frozen forward pass of {model.name} ({batch} images of {model.input_size[0]}×{model.input_size[1]})")
    trace, frozen = _frozen_forward(model, images, steps, chosen[-1])
    context = trace.context
    built_arch: list[str] = []

    def builder(path: list[str]) -> Callable[[], InverseChain]:
        def build() -> InverseChain:
            chain = InverseChain.build(model, arch=arch, seed=seed, stages=path)
            built_arch.append(chain.arch)
            return chain
        return build

    def modular_loss(stage: str) -> Callable[[InverseChain], Tensor]:
        target = trace[model.previous(stage)]
        return lambda chain: nn.functional.mse_loss(chain.invert(stage, trace[stage], context).float(), target.float())

    def classic_loss(stage: str) -> Callable[[InverseChain], Tensor]:
        def loss(chain: InverseChain) -> Tensor:  # the path composed in training mode, as training runs it
            x = trace[stage]
            for s in chain.path(stage):
                x = chain.invert(s, x, context)
            return nn.functional.mse_loss(x.float(), trace[IMAGE].float())
        return loss

    modular, classic = {}, {}
    for stage in chosen:
        say(f"modular {stage}⁻¹")
        modular[stage] = training_step_cost(builder([stage]), modular_loss(stage), device, batch, steps, [stage])
        path = model.all_stages[1: model.stage_index(stage) + 1][::-1]
        if len(path) == 1:  # the first stage: the classic inverse is the modular component
            classic[stage] = modular[stage]
            continue
        say(f"classic {' -> '.join(path)} -> img")
        classic[stage] = training_step_cost(builder(list(path)), classic_loss(stage), device, batch, steps, path)
    return EfficiencyResult(
        model=model.name, weights=str(getattr(model, "weights", "unknown")),
        arch=built_arch[0] if len(set(built_arch)) == 1 else "mixed", device=str(device), batch=batch,
        steps=steps, input_size=list(model.input_size), stages=chosen, modular=modular, classic=classic,
        frozen_forward={s: frozen[s] for s in chosen},
        memory_method=MEMORY_METHODS["cuda" if device.type == "cuda" else "cpu"],
    )


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def efficiency_table(result: EfficiencyResult) -> str:
    """A plain-text table: per stage and in total, modular vs classic."""
    rows = [("stage", "way", "params", "train FLOPs/img", "s/step", "peak memory")]
    for s in result.stages:
        for way, cost in (("modular", result.modular[s]), ("classic", result.classic[s])):
            rows.append((s, way, f"{cost.params:,}", _si(cost.train_flops_per_image), f"{cost.seconds_per_step:.3f}",
                         _si(cost.peak_memory_bytes, "B")))
        ff = result.frozen_forward[s]
        rows.append((s, "frozen fwd", "-", _si(ff["flops_per_image"]), f"{ff['seconds_per_step']:.3f}", "-"))
    totals = result.totals()
    for way in ("modular", "classic"):
        t = totals[way]
        rows.append(("all", way, f"{t['params']:,}", _si(t["flops_per_image"]), f"{t['seconds_per_step']:.3f}",
                     _si(t["peak_memory_max_bytes"], "B") + " max"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    ratio = totals["classic_over_modular"]
    lines.append("'all' adds the frozen forward passes (modular: one; classic: one per stage); "
                 "classic / modular: " + ", ".join(f"{k} {v:.2f}×" for k, v in ratio.items() if v is not None))
    lines.append(f"({result.device}, batch {result.batch}, {result.steps} timed step(s); memory: "
                 f"{result.memory_method.split(':')[0]})")
    return "\n".join(lines)


def efficiency_figure(result: EfficiencyResult, path) -> Any:
    """Bar charts per stage, modular vs classic: parameters, training GFLOPs per image, seconds per
    step and peak memory; the totals in each panel's title. Saved atomically; returns the path."""
    from modinv.figures import panel_grid, save_figure

    panels = [("trainable parameters (M)", "params", 1e-6, "params"),
              ("training GFLOPs / image", "train_flops_per_image", 1e-9, "flops_per_image"),
              (f"seconds / step (batch {result.batch})", "seconds_per_step", 1.0, "seconds_per_step"),
              (_memory_title(result), "peak_memory_bytes", 1e-6, "peak_memory_max_bytes")]
    totals = result.totals()
    x = list(range(len(result.stages)))
    fig, axes = panel_grid(len(panels), (0.45 * len(result.stages) + 2.6, 3.2))
    for ax, (title, key, scale, total_key) in zip(axes, panels):
        note = " + frozen fwd" if total_key in ("flops_per_image", "seconds_per_step") else ""
        for offset, way, color in ((-0.2, "modular", "tab:blue"), (0.2, "classic", "tab:orange")):
            costs = getattr(result, way)
            ax.bar([i + offset for i in x], [getattr(costs[s], key) * scale for s in result.stages], 0.4,
                   label=way, color=color)
        m, c = totals["modular"][total_key] * scale, totals["classic"][total_key] * scale
        ax.set_title(f"{title}\nall stages{note}: {_short(m)} vs {_short(c)}", fontsize=8)
        ax.set_xticks(x, result.stages, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.model}: modular vs classic inversion cost ({result.device})", fontsize=9)
    fig.tight_layout()
    timing = f"{result.steps} timed step(s) of batch {result.batch}: one measurement, no interval"
    return save_figure(fig, path, caption={"model": result.model, "note": f"{timing}; memory: {result.memory_method}"})


def _memory_title(result: EfficiencyResult) -> str:
    """The memory panel's title; an estimate (CPU) says so."""
    estimated = result.memory_method.startswith("estimate")
    return "peak memory (MB, estimated)" if estimated else "peak memory (MB, measured)"
