"""Stage any ``nn.Module`` by dotted module paths.

:func:`from_module` wraps a module (a torchvision or timm classifier, a hand-made ``nn.Sequential``)
as a :class:`~modinv.models.base.StagedModel` whose stages are the outputs of named submodules::

    model = from_module(torchvision.models.mobilenet_v2(), {"s8": "features.6", "s32": "features.18"},
                        input_size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)

An arbitrary module cannot be started "from the middle", so :meth:`ModuleStagedModel.run` executes
the module's own forward pass on the normalised image (``trace["img"]``, which every trace keeps)
with forward hooks: the output of the ``start`` module is *replaced* by the (possibly edited)
``trace[start]``, the outputs of the later stage modules are captured (cloned, so that in-place
operations further on cannot corrupt them) and the pass stops right after the ``end`` module.

Semantics of an edit: computation that does not flow through the ``start`` module (a residual
branch that bypasses it, a tensor cached before it) still sees the unedited image. Stage modules
that every path of the forward passes through (block outputs of a sequential backbone) are the
cut points for which an edit means "continue the network from this representation".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError, brief
from modinv.models.base import IMAGE, LAYOUTS, ModelMeta, StagedModel, Trace, stage_layout
from modinv.models.roles import TokenGrid

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _StopForward(Exception):
    """Raised from the hook of the ``end`` stage to cut the forward pass short."""


class _ParamGroup(nn.Module):
    """Holder for the parameters a module owns directly (a non-leaf module, a shared tensor).

    Built on demand by :meth:`ModuleStagedModel.stage_modules`; it is never registered as a
    submodule, so it does not change the state dict.
    """

    def __init__(self, path: str, params: list[tuple[str, nn.Parameter]]):
        super().__init__()
        self.path = path
        for i, (_, p) in enumerate(params):
            self.register_parameter(f"p{i}", p)
        self.names = [n for n, _ in params]

    def extra_repr(self) -> str:
        return f"{self.path or '<root>'}: {', '.join(self.names)}"


def _close(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=5, cutoff=0.5)
    return f"; close names: {', '.join(close)}" if close else ""


def _meta(task: str | None, class_names: Sequence[str] | None, mean: Sequence[float] | None,
          std: Sequence[float] | None, num_prefix_tokens: int, stage_layouts: Mapping[str, str]) -> ModelMeta:
    """The declared metadata of a module-staged model, with one-sentence errors for bad values
    (the task is checked by :class:`ModelMeta` itself)."""
    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)):
        raise ModinvError("class_names must be a sequence of strings, one per class index")
    return ModelMeta(
        task=task,
        class_names=tuple(class_names) if class_names is not None else None,
        mean=tuple(float(v) for v in mean) if mean is not None else None,
        std=tuple(float(v) for v in std) if std is not None else None,
        num_prefix_tokens=int(num_prefix_tokens),
        stage_layouts=dict(stage_layouts),
    )


def _layouts(declared: Mapping[str, str] | str | None, ranks: Mapping[str, int]) -> dict[str, str]:
    """The layout of every token or map stage (``ranks``: stage -> per-sample rank of its output).

    ``declared`` is one layout for every C×H×W-ranked map stage (``"nhwc"`` for a channels-last
    module) or a per-stage mapping; N×D stages are tokens, unnamed map stages ``"nchw"``."""
    per_stage = dict(declared) if isinstance(declared, Mapping) else {}
    default = declared if isinstance(declared, str) else "nchw"
    unknown = sorted(set(per_stage) - set(ranks))
    if unknown:
        raise ModinvError(f"stage_layouts names no stage: {unknown}; stages: {', '.join(ranks)}")
    out = {}
    for stage, rank in ranks.items():
        layout = per_stage.get(stage, "tokens" if rank == 2 else default if rank == 3 else None)
        if layout is None:
            continue
        if layout not in LAYOUTS:
            raise ModinvError(f"stage layouts are {', '.join(LAYOUTS)}; got {layout!r} for stage {stage!r}")
        out[stage] = stage_layout({stage: layout}, stage, (0,) * rank)  # one sentence when the rank differs
    return out


class ModuleStagedModel(StagedModel):
    """A module staged at the outputs of named submodules (see the module docstring).

    ``stage_paths`` maps each stage name to its dotted module path. Parameters are assigned to
    stages by one dry run at construction: a module's own parameters belong to the stage during
    which its forward begins (for leaf modules: the stage whose boundary follows them). Parameters
    used after the last stage, or never used in the forward pass, form the *head*
    (:meth:`head_modules`, :attr:`head_parameter_count`), which is not a stage.

    ``task``, ``class_names`` and ``num_prefix_tokens`` go to ``meta`` with ``mean`` and ``std``;
    so do the stages' layouts, read from the dry run (B×N×D outputs are tokens) and ``stage_layouts``
    (``"nhwc"`` for a module that keeps its maps channels-last, or a per-stage mapping).
    ``context`` is what every trace's context holds (e.g. ``grid`` and ``num_prefix_tokens``).
    """

    def __init__(
        self,
        module: nn.Module,
        stages: Mapping[str, str] | Sequence[str],
        input_size: tuple[int, int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "custom",
        task: str | None = None,
        class_names: Sequence[str] | None = None,
        num_prefix_tokens: int = 0,
        stage_layouts: Mapping[str, str] | str | None = None,
        context: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ModinvError(f"from_module needs an nn.Module, got {type(module).__name__}")
        self.net = module
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if isinstance(stages, str):
            stages = [stages]
        paths = dict(stages) if isinstance(stages, Mapping) else {str(p): str(p) for p in stages}
        if not paths:
            raise ModinvError("from_module needs at least one stage (a dotted module path)")
        for stage in paths:
            if not isinstance(stage, str) or not stage or stage == IMAGE:
                raise ModinvError(f"invalid stage name {stage!r}: use a non-empty name other than {IMAGE!r}")
        if len(set(paths.values())) != len(paths):
            raise ModinvError(f"two stages name the same module: {paths}")
        known = dict(module.named_modules())
        for stage, path in paths.items():
            if path not in known:
                raise ModinvError(
                    f"module {type(module).__name__} has no submodule {path!r} (stage {stage!r})"
                    + _close(path, [k for k in known if k])
                )
        self.stage_paths: dict[str, str] = dict(paths)
        self.stages = tuple(paths)
        for label, value in (("mean", mean), ("std", std)):
            if value is not None and len(value) != 3:
                raise ModinvError(f"{label} must hold 3 values (one per RGB channel), got {list(value)}")
        if std is not None and any(float(s) == 0 for s in std):
            raise ModinvError(f"std must be non-zero, got {list(std)}")
        self.set_normalization(mean if mean is not None else (0.0,) * 3, std if std is not None else (1.0,) * 3)
        self._context = dict(context or {})
        self._assignment: dict[str, list[tuple[str, list[str]]]] = {}
        self._ranks: dict[str, int] = {}  # stage -> per-sample rank of its output
        self._dry_run()
        self.meta = _meta(task, class_names, mean, std, num_prefix_tokens, _layouts(stage_layouts, self._ranks))

    # -- helpers --------------------------------------------------------------------------------
    def _module(self, stage: str) -> nn.Module:
        return self.net.get_submodule(self.stage_paths[stage])

    def _forward(self, x: Tensor, hooks: dict[str, Callable]) -> Any:
        handles = [self._module(s).register_forward_hook(h) for s, h in hooks.items()]
        try:
            return self.net(x)
        finally:
            for h in handles:
                h.remove()

    def _check_output(self, stage: str, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise ModinvError(
                f"stage {stage!r} (module {self.stage_paths[stage]!r}) outputs a {type(output).__name__}, "
                "not a tensor; stage a submodule whose output is one tensor"
            )
        return output

    def _replace_hook(self, stage: str, value: Tensor) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> Tensor:
            output = self._check_output(stage, output)
            if tuple(value.shape) != tuple(output.shape):
                raise ModinvError(
                    f"stage {stage!r} holds a tensor of shape {tuple(value.shape)} but the model produces "
                    f"{tuple(output.shape)} there; an edited stage must keep its shape"
                )
            # a copy: in-place operations after the stage must not change the caller's trace
            return value.to(dtype=output.dtype, device=output.device).clone()

        return hook

    def _image(self, stages: Mapping[str, Tensor]) -> Tensor:
        if IMAGE not in stages:
            raise ModinvError(
                f"model {self.name!r} recomputes stages from the image; the trace must keep stage {IMAGE!r}"
            )
        return stages[IMAGE]

    # -- the dry run: order checks and parameter assignment -----------------------------------
    def _dry_run(self) -> None:
        net = self.net
        ref = next((p for p in net.parameters() if p.is_floating_point()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        blank = torch.zeros(1, 3, *self.input_size, device=device, dtype=dtype)

        boundaries: list[str] = []  # stage names in the order their module finished
        calls: dict[str, int] = {s: 0 for s in self.stages}
        owner: dict[int, int] = {}  # id(param) -> stage position (len(stages) = head)
        assignment: list[list[tuple[str, list[str]]]] = [[] for _ in range(len(self.stages) + 1)]
        path_of = {id(m): p for p, m in net.named_modules()}

        def pre_hook(module: nn.Module, args: Any) -> None:
            position = len(boundaries)
            names = [n for n, p in module.named_parameters(recurse=False) if id(p) not in owner]
            for n, p in module.named_parameters(recurse=False):
                owner.setdefault(id(p), position)
            if names:
                assignment[position].append((path_of[id(module)], names))

        def stage_hook(stage: str) -> Callable:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                self._ranks[stage] = self._check_output(stage, output).ndim - 1
                calls[stage] += 1
                if calls[stage] == 1:
                    boundaries.append(stage)

            return hook

        handles = [m.register_forward_pre_hook(pre_hook) for m in net.modules()]
        handles += [self._module(s).register_forward_hook(stage_hook(s)) for s in self.stages]
        modes = {m: m.training for m in net.modules()}
        net.eval()
        try:
            with torch.no_grad():
                x = (blank - self.mean.to(device, dtype)) / self.std.to(device, dtype)
                net(x)
        except ModinvError:
            raise
        except Exception as exc:
            raise ModinvError(
                f"model {self.name!r} fails on a blank {self.input_size[0]}×{self.input_size[1]} image "
                f"({brief(exc)}); check input_size"
            ) from None
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode

        never = [s for s, n in calls.items() if n == 0]
        if never:
            raise ModinvError(f"stage module(s) {[self.stage_paths[s] for s in never]} never run in the forward pass")
        repeated = [s for s, n in calls.items() if n > 1]
        if repeated:
            raise ModinvError(
                f"stage module(s) {[self.stage_paths[s] for s in repeated]} run more than once per forward "
                "pass (a shared module); stage a module that runs once"
            )
        if tuple(boundaries) != self.stages:
            order = [f"{s}={self.stage_paths[s]}" for s in boundaries]
            raise ModinvError(f"stages must be listed in execution order: {', '.join(order)}")
        # parameters that never took part in the forward pass count toward the head
        for path, module in net.named_modules():
            names = [n for n, p in module.named_parameters(recurse=False) if id(p) not in owner]
            for n, p in module.named_parameters(recurse=False):
                owner.setdefault(id(p), len(self.stages))
            if names:
                assignment[-1].append((path, names))
        self._assignment = {s: assignment[i] for i, s in enumerate(self.stages)}
        self._head_assignment = assignment[-1]

    def _modules_of(self, groups: list[tuple[str, list[str]]]) -> list[nn.Module]:
        out: list[nn.Module] = []
        for path, names in groups:
            module = self.net.get_submodule(path)
            own = [n for n, _ in module.named_parameters(recurse=False)]
            leaf = next(iter(module.children()), None) is None
            if leaf and names == own:
                out.append(module)
            else:
                out.append(_ParamGroup(path, [(n, getattr(module, n)) for n in names]))
        return out

    # -- StagedModel ------------------------------------------------------------------------------
    def prepare(self, images: Tensor) -> dict[str, Any]:
        return dict(self._context)

    def token_stages(self) -> dict[str, TokenGrid]:
        """Every B×N×D stage, on the ``grid`` (after ``num_prefix_tokens``) that ``context`` names
        (timm's ViTs); none without one. Block outputs carry no explicit position."""
        grid = self._context.get("grid")
        if grid is None:
            return {}
        prefix = int(self._context.get("num_prefix_tokens", 0))
        return {s: TokenGrid(tuple(int(g) for g in grid), prefix)
                for s in self.stages if self.meta.stage_layouts.get(s) == "tokens"}

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {s: self._modules_of(groups) for s, groups in self._assignment.items()}

    def head_modules(self) -> list[nn.Module]:
        """Modules (or parameter groups) used after the last stage or never used: not a stage."""
        return self._modules_of(self._head_assignment)

    @property
    def head_parameter_count(self) -> int:
        """Parameters after the last stage (classifier head) plus unused ones."""
        return sum(p.numel() for m in self.head_modules() for p in m.parameters())

    def _advance(self, stages: dict[str, Tensor], start: str, end: str, context: dict[str, Any]) -> dict[str, Tensor]:
        i, j = self.stage_index(start), self.stage_index(end)
        wanted = self.all_stages[i + 1 : j + 1]
        captured: dict[str, Tensor] = {}
        hooks: dict[str, Callable] = {}
        if start != IMAGE:
            hooks[start] = self._replace_hook(start, stages[start])

        def capture(stage: str) -> Callable:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                captured[stage] = self._check_output(stage, output).clone()
                if stage == end:
                    raise _StopForward

            return hook

        for stage in wanted:
            hooks[stage] = capture(stage)
        try:
            self._forward(self.normalize(self._image(stages)), hooks)
        except _StopForward:
            pass
        missing = [s for s in wanted if s not in captured]
        if missing:  # e.g. control flow that depends on the input skipped a stage module
            raise ModinvError(f"stage(s) {missing} of model {self.name!r} were not reached in the forward pass")
        return {s: captured[s] for s in wanted}

    def output(self, trace: Trace) -> Any:
        """The wrapped module's own output, computed from the last stage of ``trace``."""
        last = self.stages[-1]
        return self._forward(self.normalize(self._image(trace.stages)), {last: self._replace_hook(last, trace[last])})


def from_module(
    module: nn.Module,
    stages: Mapping[str, str] | Sequence[str],
    input_size: tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str = "custom",
    task: str | None = None,
    class_names: Sequence[str] | None = None,
    stage_layouts: Mapping[str, str] | str | None = None,
) -> ModuleStagedModel:
    """Stage any ``module`` at the outputs of its submodules; a frozen, eval-mode model.

    ``stages`` maps stage names to dotted module paths (``{"s8": "features.6"}``) or is a sequence
    of paths that double as stage names, listed in execution order. ``input_size`` is (H, W).
    Images enter in [0, 1] and are normalised with ``mean``/``std`` (none when not given) before
    the module sees them. Stage outputs must be single tensors. ``task`` (``"classification"``,
    ``"detection"`` or None) and ``class_names`` (one per output index) declare what the module's
    output is, in ``model.meta``, for the analyses and task metrics that need it. ``stage_layouts``:
    ``"nhwc"`` when the module keeps its feature maps channels-last (B×H×W×C), or ``{stage:
    "nchw" | "nhwc" | "tokens"}``; by default B×N×D outputs are tokens and 4-D ones B×C×H×W.
    """
    return ModuleStagedModel(
        module, stages, input_size, mean=mean, std=std, name=name, task=task, class_names=class_names,
        stage_layouts=stage_layouts,
    ).freeze()
