"""The InverseChain: one inverse component per stage, composed into image reconstructions (Eq. 2).

    chain = InverseChain.build(model, seed=0)                    # components for every stage
    images = chain.reconstruct(trace, "enc")                     # enc⁻¹ then bb⁻¹
    chain.save("runs/detr-s0", metrics={"enc": {"val_mse": 0.1}})
    chain = InverseChain.load("runs/detr-s0", model)             # refuses a chain of another model
    chain.replace("enc", "runs/detr-s1")                         # mix instances trained with other seeds

This module only composes components; :mod:`modinv.inverse.storage` owns the folder a chain is
saved to (safetensors + JSON per component, manifest, checksums) and :mod:`modinv.inverse.registry`
rebuilds components from their JSON configs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse import auto
from modinv.inverse.registry import build_component, paper_specs_of
from modinv.inverse.remote import hub_label, is_hub_spec, is_local, parse_hub_id, push_to_hub, resolve_chain_spec, snapshot
from modinv.inverse.storage import (
    fmt_shape,
    layout_mismatch,
    layout_of,
    load_component,
    model_layout,
    model_seed_mismatch,
    read_manifest,
    save_chain,
)
from modinv.inverse.stage_modules import StageModules
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.models.weights import seeded
from modinv.runtime import resolve_device

# "paper": the components of the family the model declares (model.meta.inverse_family); "auto": chosen
# from the stage shapes of any model; "default": "paper" where the model declares a family, else "auto".
ARCHS = ("paper", "auto", "default")
def probe_context(model: StagedModel) -> dict[str, Any]:
    """The grid entries of the context of a blank image and the stages' declared layouts (what
    shape-based builders need)."""
    blank = torch.zeros(1, 3, *model.input_size, device=model.device)
    with torch.no_grad():
        context = model.trace(blank).context
    out: dict[str, Any] = {}
    if context.get("grid") is not None:
        out["grid"] = [int(v) for v in context["grid"]]
    if context.get("num_prefix_tokens") is not None:
        out["num_prefix_tokens"] = int(context["num_prefix_tokens"])
    if model.meta.stage_layouts:
        out["stage_layouts"] = dict(model.meta.stage_layouts)
    return out


@contextlib.contextmanager
def _inference(modules: Sequence[nn.Module]) -> Iterator[None]:
    """``modules`` (and their submodules) in eval mode for the block, each one's mode restored after."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


# -- the chain -----------------------------------------------------------------------------------------

class InverseChain(nn.Module):
    """Inverse components ``stage -> component`` (mapping stage j to stage j-1) of one staged model.

    ``layout`` says what the chain was made for (:func:`model_layout`: model name, weights, stages
    including ``"img"``, shapes, input size); ``meta`` holds per stage the seed, variant, arch,
    config, training and metrics that travel with each component.
    """

    def __init__(self, components: Mapping[str, nn.Module], layout: Mapping[str, Any],
                 meta: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.layout = copy.deepcopy(dict(layout))
        self.components = StageModules()
        self.component_meta: dict[str, dict[str, Any]] = {}
        for stage in self.model_stages:
            if stage in components:
                self._put(stage, components[stage], dict((meta or {}).get(stage, {})))
        unknown = set(components) - set(self.model_stages)
        if unknown:
            raise ModinvError(
                f"no stage(s) {sorted(unknown)} in model {self.model_name!r}; stages: {', '.join(self.model_stages)}"
            )

    # -- what the chain is --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.layout["model"]

    @property
    def model_stages(self) -> tuple[str, ...]:
        """The model's stages (without ``"img"``)."""
        return tuple(s for s in self.layout["stages"] if s != IMAGE)

    @property
    def stages(self) -> tuple[str, ...]:
        """Stages that have a component, in processing order."""
        return tuple(s for s in self.model_stages if s in self.components)

    @property
    def arch(self) -> str:
        archs = {m.get("arch") for m in self.component_meta.values()} - {None}
        return archs.pop() if len(archs) == 1 else ("mixed" if archs else self.layout.get("arch", "unknown"))

    def previous(self, stage: str) -> str:
        stages = list(self.layout["stages"])
        if stage not in stages or stage == IMAGE:
            raise ModinvError(
                f"unknown stage {stage!r} for model {self.model_name!r}; valid stages: {', '.join(self.model_stages)}"
            )
        return stages[stages.index(stage) - 1]

    @property
    def training_steps(self) -> int | None:
        """The most optimisation steps any component was trained for (None: untrained or unknown)."""
        steps = [m.get("training", {}).get("steps") for m in self.component_meta.values()]
        steps = [int(v) for v in steps if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return max(steps) if steps else None

    def seeds(self) -> dict[str, Any]:
        return {s: self.component_meta[s].get("seed") for s in self.stages}

    def untrained_stages(self) -> list[str]:
        """Stages whose component never trained while others did (``train --stages s4`` leaves the
        rest as built: their reconstructions mean nothing); empty for a chain nothing trained."""
        trained = {s for s in self.stages if self.component_meta[s].get("training")}
        return [s for s in self.stages if s not in trained] if trained else []

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, arch={self.arch!r}, stages={list(self.stages)}"

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: StagedModel, arch: str = "default", seed: int = 0, stages: Sequence[str] | None = None,
              variants: Mapping[str, str] | None = None) -> "InverseChain":
        """Fresh components for ``stages`` (default: all) of ``model``, each built under ``seed``.

        ``arch="paper"``: the paper's components of the family the model declares
        (``model.meta.inverse_family``, e.g. DETR-R50, ViT-B/16); ``"auto"``: components chosen from
        the stage shapes of any staged model; ``"default"`` (what the CLI uses): ``"paper"`` where the
        model declares a family, else ``"auto"``. ``variants``: ``{"bb": "standard" | "local" |
        "analytic", "pred": "fd" | "oh"}``. The chain is on the model's device, in training mode.
        """
        if not isinstance(model, StagedModel):
            raise ModinvError(f"InverseChain.build needs a StagedModel (from modinv.load_model), got {model!r}")
        if arch not in ARCHS:
            raise ModinvError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        family = model.meta.inverse_family
        if arch == "default":
            arch = "paper" if family else "auto"
        if arch == "paper" and not family:
            raise ModinvError(
                f"model {model.name!r} declares no inverse family (model.meta.inverse_family), so it has no "
                "paper components; use arch='auto' for it"
            )
        variants = dict(variants or {})
        bad = [k for k in variants if k not in model.stages]
        if bad:
            raise ModinvError(f"variants name no stage of {model.name!r}: {bad}; stages: {', '.join(model.stages)}")
        if stages is None:
            chosen = list(model.stages)
        else:
            stages = [stages] if isinstance(stages, str) else list(stages)
            for s in stages:
                model.stage_index(s)  # clear error for unknown names
                if s == IMAGE:
                    raise ModinvError(f"{IMAGE!r} is the image, it has no inverse component")
            chosen = [s for s in model.stages if s in stages]
        layout = model_layout(model) | {"arch": arch}
        shapes = {s: tuple(v) for s, v in layout["shapes"].items()}
        specs_of = paper_specs_of(family) if arch == "paper" else auto.auto_specs
        specs = specs_of(shapes, probe_context(model), variants, chosen)
        components, meta = {}, {}
        for stage in chosen:
            config = specs[stage]["config"]
            with seeded(seed):
                component = build_component(config)
            if hasattr(component, "initialise_from_model"):
                component.initialise_from_model(model)
            components[stage] = component
            prev = model.previous(stage)
            meta[stage] = {
                "seed": seed, "variant": specs[stage]["variant"], "arch": arch,
                "in_shape": list(shapes[stage]), "out_shape": list(shapes[prev]),
                "training": {}, "metrics": {},
            }
        return cls(components, layout, meta).to(model.device).attach(model)

    def _put(self, stage: str, component: nn.Module, meta: dict[str, Any]) -> None:
        config = getattr(component, "config", None)
        if not isinstance(config, dict) or "kind" not in config:
            raise ModinvError(
                f"the component for {stage!r} has no config (kind + kwargs) and could not be saved or rebuilt; "
                "build it with modinv.inverse.build_component"
            )
        meta = copy.deepcopy(meta)
        meta.setdefault("seed", None)
        meta.setdefault("variant", "custom")
        meta.setdefault("arch", "custom")
        meta.setdefault("training", {})
        meta.setdefault("metrics", {})
        shapes = self.layout.get("shapes", {})
        for key, s in (("in_shape", stage), ("out_shape", self.previous(stage))):
            if key in meta and s in shapes and list(meta[key]) != list(shapes[s]):
                raise ModinvError(
                    f"the component for {stage!r} maps {fmt_shape(meta['in_shape'])} -> "
                    f"{fmt_shape(meta['out_shape'])}, but this chain needs {fmt_shape(shapes[stage])} -> "
                    f"{fmt_shape(shapes[self.previous(stage)])}"
                )
            if s in shapes:
                meta[key] = list(shapes[s])
        meta["stage"], meta["previous"] = stage, self.previous(stage)
        meta["kind"], meta["config"] = config["kind"], copy.deepcopy(config)
        self.components[stage] = component
        self.component_meta[stage] = meta

    def replace(self, stage: str, component: "nn.Module | InverseChain | str | os.PathLike",
                meta: Mapping[str, Any] | None = None) -> "InverseChain":
        """Put another instance in for ``stage``: a module (with ``config``), the component of another
        chain, or the component saved in another chain directory (checked against this chain's layout).
        Its metadata (seed, variant, training, metrics) comes along. Returns the chain."""
        self.previous(stage)
        if isinstance(component, (str, os.PathLike)):
            component = resolve_chain_spec(component)
            manifest = read_manifest(component)
            why = layout_mismatch(manifest, self.layout)
            if why:
                raise ModinvError(f"cannot take {stage!r} from {str(component)!r}: {why}")
            self._warn_weights(manifest, f"{stage!r} from {str(component)!r}")
            if stage not in manifest.get("components", {}):
                raise ModinvError(f"{str(component)!r} holds no component for stage {stage!r}")
            component, loaded = load_component(component, stage, self._device() or "cpu", manifest)
            meta = loaded if meta is None else meta
        elif isinstance(component, InverseChain):
            why = layout_mismatch(component.layout, self.layout)
            if why:
                raise ModinvError(f"cannot take {stage!r} from that chain: {why}")
            if stage not in component.components:
                raise ModinvError(f"that chain has no component for stage {stage!r}")
            meta = component.component_meta[stage] if meta is None else meta
            component = component.components[stage]
        elif not isinstance(component, nn.Module):
            raise ModinvError(f"replace takes a module, an InverseChain or a directory, got {type(component).__name__}")
        device = self._device()
        self._put(stage, component if device is None else component.to(device), dict(meta or {}))
        return self

    def _device(self) -> torch.device | None:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return None

    def _warn_weights(self, other: Mapping[str, Any], what: str) -> None:
        mine, theirs = self.layout.get("weights"), other.get("weights")
        if mine and theirs and mine != theirs:
            warnings.warn(f"{what} was trained on {self.model_name} weights {theirs!r}, this chain on {mine!r}",
                          stacklevel=3)

    # -- using ----------------------------------------------------------------------------------------
    def component(self, stage: str) -> nn.Module:
        self.previous(stage)
        if stage not in self.components:
            raise ModinvError(
                f"this chain has no inverse component for stage {stage!r} (it holds: {', '.join(self.stages) or 'none'})"
            )
        return self.components[stage]

    def invert(self, stage: str, x: Tensor, context: Mapping[str, Any] | None = None) -> Tensor:
        """One step back: stage ``stage``'s representation -> the previous stage's."""
        return self.component(stage)(x, dict(context or {}))

    def path(self, stage: str) -> list[str]:
        """The stages whose components reconstruct the image from ``stage``: ``[stage, ..., first]``."""
        self.previous(stage)
        stages = list(self.model_stages)
        path = stages[: stages.index(stage) + 1][::-1]
        missing = [s for s in path if s not in self.components]
        if missing:
            raise ModinvError(
                f"cannot reconstruct from {stage!r}: this chain has no inverse component for "
                f"{', '.join(map(repr, missing))} (it holds: {', '.join(self.stages) or 'none'}); build them "
                f"(InverseChain.build(model, stages=...)) or add them with chain.replace(stage, DIR)"
            )
        return path

    def reconstruct(self, trace: Trace, stage: str, grad: bool = False) -> Tensor:
        """Images from ``trace[stage]`` through the components ``stage, ..., first`` (Eq. 2):
        float32 B×3×H×W in [0, 1].

        Inference: the components run in eval mode (BatchNorm uses its running statistics, so an
        image's reconstruction does not depend on the rest of the batch, and the statistics are
        not updated), their modes restored afterwards; no autograd graph unless ``grad=True``
        (e.g. for gradients with respect to the input). Training composes components itself.
        """
        path = self.path(stage)
        x = self._stage_of(trace, stage)
        components = [self.components[s] for s in path]
        with _inference(components), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for component in components:
                x = component(x, trace.context)
        return x.float()

    def reconstruct_images(self, images: Any, stage: str | None = None, model: StagedModel | None = None,
                           original_size: bool = False) -> Tensor | list[Tensor]:
        """Reconstructions of ``images`` from ``stage`` in one call: paths, PIL images, arrays or
        tensors of any size (:func:`modinv.data.image_tensors`), resized to the model's input size
        (the model normalises them as it declares), traced in float32 and inverted.

        ``stage``: default the deepest stage the chain reconstructs from. ``model``: default the
        one the chain was built or loaded with. Returns a float32 B×3×H×W tensor in [0, 1] at the
        model's input size, or with ``original_size=True`` a list of 3×h×w tensors, each resized
        back to its image's own size.
        """
        from modinv.data import image_tensors
        from modinv.data.transforms import resize_image

        model = model if model is not None else self.model
        if model is None:
            raise ModinvError("this chain knows no model (it was made without one); pass model=")
        if stage is None:
            complete = [s for s in self.model_stages if self._complete(s)]
            if not complete:
                raise ModinvError("this chain reconstructs from no stage: it lacks the first stage's component")
            stage = complete[-1]
        originals = image_tensors(images)
        size = tuple(model.input_size)
        batch = torch.stack([resize_image(image, size) for image in originals]).to(model.device)
        with torch.no_grad():
            recon = self.reconstruct(model.trace(batch), stage).cpu()
        if not original_size:
            return recon
        return [resize_image(r, tuple(o.shape[-2:])) for r, o in zip(recon, originals)]

    @property
    def model(self) -> StagedModel | None:
        """The model this chain was built or loaded with, while it exists (None otherwise)."""
        ref = self.__dict__.get("_model_ref")
        return ref() if ref is not None else None

    def attach(self, model: StagedModel) -> "InverseChain":
        """Remember ``model`` (weakly) as the one :meth:`reconstruct_images` uses; returns the chain."""
        self.__dict__["_model_ref"] = weakref.ref(model)
        return self

    @property
    def end_to_end_stage(self) -> str | None:
        """For a classic or fine-tuned chain, the one stage it was trained to reconstruct from
        (its lower components are parts of that path, not inverses of their own stage)."""
        return self.layout.get("classic_stage") or self.layout.get("finetune_stage")

    def reconstruct_all(self, trace: Trace, stages: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{stage: images}`` for ``stages`` (default: every stage of the trace the chain can reconstruct)."""
        if stages is None:
            stages = [s for s in self.model_stages if s in trace and self._complete(s)]
            if not stages:
                raise ModinvError(
                    f"this chain (holding {', '.join(self.stages) or 'nothing'}) reconstructs none of the trace's "
                    f"stages {', '.join(s for s in trace.stages if s != IMAGE)}"
                )
        return {s: self.reconstruct(trace, s) for s in stages}

    def forward(self, trace: Trace, stage: str) -> Tensor:
        return self.reconstruct(trace, stage)

    def _complete(self, stage: str) -> bool:
        stages = list(self.model_stages)
        return all(s in self.components for s in stages[: stages.index(stage) + 1])

    @staticmethod
    def _stage_of(trace: Trace, stage: str) -> Tensor:
        if not isinstance(trace, Trace):
            raise ModinvError(f"reconstruct takes a Trace (model.trace(images)), got {type(trace).__name__}")
        if stage not in trace:
            raise ModinvError(f"the trace holds no stage {stage!r}; it holds {', '.join(trace.stages)}")
        return trace[stage]

    # -- parameter counts ----------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameters per stage's component, and ``"total"`` (the modular approach's p)."""
        counts = {s: sum(p.numel() for p in self.components[s].parameters() if p.requires_grad) for s in self.stages}
        return counts | {"total": sum(counts.values())}

    def full_path_parameters(self) -> dict[str, int]:
        """What classic full-path inverses built from the same components would train: the inverse
        from stage j to the image is components j..1, so per stage ``sum_{i<=j} p_i``, and under
        ``"total"`` the sum over stages, the classic approach's count (the paper's (n+1)p/2 for n
        equal-sized components; compare ``trainable_parameters()["total"]``, the modular one)."""
        per = self.trainable_parameters()
        out, running = {}, 0
        for s in self.model_stages:
            if s not in self.components:
                break
            running += per[s]
            out[s] = running
        if not out:
            raise ModinvError("the full-path estimate needs the component of the first stage; this chain lacks it")
        return out | {"total": sum(out.values())}

    # -- saving and loading --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metrics: Mapping[str, Mapping[str, Any]] | None = None,
             training: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
        """Write the chain to folder ``path`` (created if needed), all its files replaced together
        (format: :mod:`modinv.inverse.storage`). Returns the folder.

        ``metrics`` / ``training``: per stage, e.g. ``{"enc": {"val_mse": 0.012}}`` /
        ``{"enc": {"steps": 20000}}``, or one flat dict (keys not all stage names) for every
        component, e.g. ``{"steps": 20000}``; they are merged into the components' metadata.
        """
        for name, extra in (("metrics", metrics), ("training", training)):
            for stage, values in self._per_stage(extra, name).items():
                self.component_meta[stage][name].update(copy.deepcopy(dict(values)))
        try:
            full_path = self.full_path_parameters()
        except ModinvError:
            full_path = None
        fields = {k: v for k, v in self.layout.items() if k != "arch"} | {
            "arch": self.arch,
            "seeds": self.seeds(),
            "variants": {s: self.component_meta[s].get("variant") for s in self.stages},
            "metrics": {s: self.component_meta[s].get("metrics", {}) for s in self.stages},
            "trainable_parameters": self.trainable_parameters(),
            "full_path_parameters": full_path,
        }
        components = {s: self.components[s] for s in self.stages}
        return save_chain(path, components, {s: self.component_meta[s] for s in self.stages}, fields)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this chain with its model card to hub repository ``repo_id``; returns its URL
        (``kwargs``: token, private, commit_message; see :func:`modinv.inverse.remote.push_to_hub`)."""
        return push_to_hub(self, repo_id, verify=InverseChain.load, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_id_or_path: str | os.PathLike, model: StagedModel | None = None,
                        revision: str | None = None, token: str | None = None, **load_kwargs: Any) -> "InverseChain":
        """A chain by hub id (``user/name``, ``hf:user/name[@revision]``; local cache first) or folder,
        checked against ``model`` as :meth:`load` checks a folder (``load_kwargs`` go to :meth:`load`)."""
        if is_local(repo_id_or_path):
            return cls.load(Path(repo_id_or_path), model, **load_kwargs)
        folder = snapshot(repo_id_or_path, revision, token=token)
        try:
            return cls.load(folder, model, **load_kwargs)
        except ModinvError as exc:  # name the hub id, not the cache folder it was read from
            spec = hub_label(*parse_hub_id(str(repo_id_or_path), revision))
            raise ModinvError(str(exc).replace(str(folder), spec)) from None

    def _per_stage(self, extra: Mapping[str, Any] | None, name: str) -> dict[str, Mapping[str, Any]]:
        if not extra:
            return {}
        if all(k in self.model_stages and isinstance(v, Mapping) for k, v in extra.items()):
            missing = [k for k in extra if k not in self.components]
            if missing:
                raise ModinvError(f"{name} for stage(s) {missing}, which have no component in this chain")
            return dict(extra)
        return {s: extra for s in self.stages}

    @classmethod
    def load(cls, path: str | os.PathLike, model: StagedModel | None = None,
             map_location: str | torch.device | None = None,
             components: Mapping[str, str | os.PathLike] | None = None) -> "InverseChain":
        """Rebuild a saved chain from its JSON configs and safetensors weights, in eval mode, on
        ``map_location`` (default: the model's device, or the CPU without a model).

        With ``model`` the chain must have been made for it (same name, stage layout and shapes;
        other weights only warn). ``components={"enc": OTHER_DIR}`` takes those stages' components
        from other saved chains of the same layout (e.g. trained with other seeds).
        """
        if is_hub_spec(path):  # "hf:user/name": through the hub cache; errors name the hub id, not the cache
            return cls.from_pretrained(path, model, map_location=map_location, components=components)
        if map_location is None:
            map_location = model.device if model is not None else "cpu"
        else:  # one the caller named: it must exist here
            map_location = resolve_device(map_location)
        directory = Path(path)
        manifest = read_manifest(directory)
        layout = layout_of(manifest)
        if model is not None:
            why = layout_mismatch(layout, model_layout(model)) or model_seed_mismatch(layout, model)
            if why:
                raise ModinvError(f"the inverse chain in {str(directory)!r} does not fit model {model.name!r}: {why}")
        loaded, meta = {}, {}
        for stage in manifest.get("components", {}):
            loaded[stage], meta[stage] = load_component(directory, stage, map_location, manifest)
        chain = cls(loaded, layout, meta)
        weights = str(getattr(model, "weights", "")) if model is not None else ""
        if weights and layout.get("weights") and weights != layout["weights"]:
            warnings.warn(f"the inverse chain in {str(directory)!r} was trained on {model.name} weights "
                          f"{layout['weights']!r}; the model has {weights!r}", stacklevel=2)
        for stage, other in (components or {}).items():
            chain.replace(stage, other)
        if model is not None:
            chain.attach(model)
        return chain.to(map_location).eval()
