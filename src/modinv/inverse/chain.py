"""The InverseChain: one inverse component per stage, composed into image reconstructions (Eq. 2).

    chain = InverseChain.build(model, arch="paper", seed=0)      # components for every stage
    images = chain.reconstruct(trace, "enc")                     # enc⁻¹ then bb⁻¹
    chain.save("runs/detr-s0", metrics={"enc": {"val_mse": 0.1}})
    chain = InverseChain.load("runs/detr-s0", model)             # refuses a chain of another model
    chain.replace("enc", "runs/detr-s1")                         # mix instances trained with other seeds

On disk a chain is a directory: ``<stage>.safetensors`` (weights) and ``<stage>.json`` (config,
seed, variant, training, metrics, checksum) per component, and ``manifest.json`` (model name and
weights, stage layout and shapes, arch, seeds, metrics, modinv version). Loading rebuilds every
component from its JSON config through the registry of kinds and reads its weights from the
safetensors file: no pickle, no code from the directory runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError, brief
from modinv.inverse import auto, detr, vit
from modinv.inverse.registry import build_component
from modinv.models.base import IMAGE, StagedModel, Trace
from modinv.models.weights import seeded

FORMAT = "modinv-inverse-chain"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARCHS = ("paper", "auto", "default")  # "default": "paper" where the paper has components, else "auto"
PAPER_SPECS = {name: detr.paper_specs for name in detr.MODEL_NAMES} | {name: vit.paper_specs for name in vit.MODEL_NAMES}
_DOT = "\u2024"  # ModuleDict keys cannot hold ".", stage names of module-staged models can


def _version() -> str:
    from modinv import __version__

    return __version__


class StageModules(nn.ModuleDict):
    """``nn.ModuleDict`` keyed by stage name (dots allowed), in stage order."""

    @staticmethod
    def _key(stage: str) -> str:
        return stage.replace(".", _DOT)

    @staticmethod
    def _stage(key: str) -> str:
        return key.replace(_DOT, ".")

    def __getitem__(self, stage: str) -> nn.Module:
        return super().__getitem__(self._key(stage))

    def __setitem__(self, stage: str, module: nn.Module) -> None:
        super().__setitem__(self._key(stage), module)

    def __delitem__(self, stage: str) -> None:
        super().__delitem__(self._key(stage))

    def __contains__(self, stage: object) -> bool:
        return isinstance(stage, str) and super().__contains__(self._key(stage))

    def __iter__(self) -> Iterator[str]:
        return (self._stage(k) for k in super().__iter__())

    def keys(self):  # type: ignore[override]
        return [self._stage(k) for k in super().keys()]

    def items(self):  # type: ignore[override]
        return [(self._stage(k), v) for k, v in super().items()]


# -- layouts: what a chain was made for ----------------------------------------------------------------

def model_layout(model: StagedModel) -> dict[str, Any]:
    """Model name, weights id, stage layout, per-sample stage shapes and input size of ``model``."""
    shapes = model.stage_shapes()
    return {
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "stages": list(model.all_stages),
        "shapes": {s: list(shapes[s]) for s in model.all_stages},
        "input_size": list(model.input_size),
    }


def _fmt_shape(shape: Sequence[int]) -> str:
    return "×".join(str(int(d)) for d in shape)


def layout_mismatch(made_for: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """Why a chain made for ``made_for`` does not fit ``other`` (None when it fits)."""
    if made_for.get("model") != other.get("model"):
        return f"it was made for model {made_for.get('model')!r}, not {other.get('model')!r}"
    if list(made_for.get("stages", [])) != list(other.get("stages", [])):
        return (f"it was made for the stage layout {', '.join(made_for.get('stages', []))}, "
                f"not {', '.join(other.get('stages', []))}")
    size_a, size_b = made_for.get("input_size"), other.get("input_size")
    if size_a and size_b and list(size_a) != list(size_b):
        return (f"it was made for input size {_fmt_shape(size_a)}, but the model takes {_fmt_shape(size_b)} "
                f"(another input size; load the model at {_fmt_shape(size_a)})")
    a, b = made_for.get("shapes", {}), other.get("shapes", {})
    for stage in made_for.get("stages", []):
        if list(a.get(stage, [])) != list(b.get(stage, [])):
            return (f"it was made for stage {stage!r} of shape {_fmt_shape(a.get(stage, []))}, but here it is "
                    f"{_fmt_shape(b.get(stage, []))} (another input size?)")
    return None


def _probe_context(model: StagedModel) -> dict[str, Any]:
    """The grid entries of the context of a blank image (what shape-based builders need)."""
    blank = torch.zeros(1, 3, *model.input_size, device=model.device)
    with torch.no_grad():
        context = model.trace(blank).context
    out: dict[str, Any] = {}
    if context.get("grid") is not None:
        out["grid"] = [int(v) for v in context["grid"]]
    if context.get("num_prefix_tokens") is not None:
        out["num_prefix_tokens"] = int(context["num_prefix_tokens"])
    return out


# -- files ---------------------------------------------------------------------------------------------

def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda tmp: _dump_json(tmp, obj))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModinvError(f"{str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModinvError(f"cannot read {str(path)!r} ({brief(exc)})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stage_file(directory: Path, stage: str, suffix: str) -> Path:
    if not stage or "/" in stage or os.sep in stage or stage.startswith("."):
        raise ModinvError(f"stage name {stage!r} cannot name a file; rename the stage")
    return directory / f"{stage}{suffix}"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved chain directory, checked for format."""
    directory = Path(path)
    if not (directory / MANIFEST).is_file():
        raise ModinvError(
            f"{str(directory)!r} holds no {MANIFEST}: not a saved inverse chain (write one with chain.save)"
        )
    manifest = _read_json(directory / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModinvError(f"{str(directory / MANIFEST)!r} is not an inverse-chain manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModinvError(f"{str(directory / MANIFEST)!r} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ModinvError(
            f"{str(directory)!r} was written by a newer modinv (format {manifest['format_version']}); upgrade modinv"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise ModinvError(f"{str(directory / MANIFEST)!r} is malformed: {problem}")
    return manifest


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a manifest that loading relies on (None when nothing):
    an edited or foreign file must fail with a sentence, not deep inside the loader."""
    missing = [k for k in ("model", "stages", "shapes") if k not in manifest]
    if missing:
        return f"it lacks {', '.join(map(repr, missing))}"
    if not isinstance(manifest.get("model"), str):
        return "'model' is not a name"
    stages = manifest.get("stages")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, str) and s for s in stages):
        return "'stages' is not a list of stage names"
    shapes = manifest.get("shapes")
    if not isinstance(shapes, dict) or not all(isinstance(k, str) and _is_shape(v) for k, v in shapes.items()):
        return "'shapes' is not a mapping of stage names to shapes"
    if "input_size" in manifest and not (_is_shape(manifest["input_size"]) and len(manifest["input_size"]) == 2):
        return "'input_size' is not [height, width]"
    components = manifest.get("components", {})
    if not isinstance(components, dict) or not all(isinstance(k, str) for k in components):
        return "'components' is not a mapping of stage names"
    unknown = [s for s in components if s not in stages or s == IMAGE]
    if unknown:
        return f"it lists components for {unknown}, which are not among its stages {stages}"
    return None


def load_component(path: str | os.PathLike, stage: str,
                   map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """One component of a saved chain: ``(module, metadata)``, rebuilt from JSON + safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    weights_file = _stage_file(directory, stage, ".safetensors")
    meta = _read_json(_stage_file(directory, stage, ".json"))
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModinvError(f"{str(_stage_file(directory, stage, '.json'))!r} holds no component config")
    if not weights_file.is_file():
        raise ModinvError(f"weights file {str(weights_file)!r} is missing")
    expected = meta.get("sha256")
    if expected and _sha256(weights_file) != expected:
        raise ModinvError(
            f"weights file {str(weights_file)!r} does not match the checksum in {stage}.json: "
            "it is truncated, corrupt or was replaced; save the chain again"
        )
    try:
        state = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModinvError(
            f"cannot read weights file {str(weights_file)!r} (corrupt or truncated, or not a safetensors file: "
            f"{brief(exc)})"
        ) from None
    _check_config_fits(meta["config"], state, weights_file)
    try:
        with seeded(0):  # random init is overwritten; keep the caller's RNG untouched
            module = build_component(meta["config"])
    except ModinvError:
        raise
    except Exception as exc:  # an edited config the builder cannot take
        raise ModinvError(
            f"cannot rebuild the component of {str(_stage_file(directory, stage, '.json'))!r} from its config "
            f"({brief(exc)})"
        ) from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise ModinvError(f"weights in {str(weights_file)!r} do not fit their config: {detail}") from None
    return module.to(map_location), meta


def _check_config_fits(config: dict[str, Any], state: Mapping[str, Tensor], weights_file: Path) -> None:
    """Build the component on the meta device (no memory) and compare its tensors' names and shapes
    with the file's, so that an edited config asking for a huge module fails before any allocation.
    Builders that cannot run on the meta device are let through (the strict load checks them)."""
    try:
        with torch.device("meta"), seeded(0):
            expected = {k: tuple(v.shape) for k, v in build_component(config).state_dict().items()}
    except ModinvError:
        raise
    except Exception:  # noqa: BLE001 - not meta-friendly: the real build and strict load decide
        return
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected == found:
        return
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
    else:
        key = next(k for k in expected if expected[k] != found[k])
        detail = f"{key} is {_fmt_shape(found[key])} in the file, {_fmt_shape(expected[key])} by the config"
    raise ModinvError(f"weights in {str(weights_file)!r} do not fit their config: {detail}")


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

    def seeds(self) -> dict[str, Any]:
        return {s: self.component_meta[s].get("seed") for s in self.stages}

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, arch={self.arch!r}, stages={list(self.stages)}"

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: StagedModel, arch: str = "paper", seed: int = 0, stages: Sequence[str] | None = None,
              variants: Mapping[str, str] | None = None) -> "InverseChain":
        """Fresh components for ``stages`` (default: all) of ``model``, each built under ``seed``.

        ``arch="paper"``: the paper's components (DETR-R50, ViT-B/16); ``"auto"``: components chosen
        from the stage shapes of any staged model; ``"default"``: ``"paper"`` where it exists, else
        ``"auto"``. ``variants``: ``{"bb": "standard" | "local" |
        "analytic", "pred": "fd" | "oh"}``. The chain is on the model's device, in training mode.
        """
        if arch not in ARCHS:
            raise ModinvError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        if arch == "default":
            arch = "paper" if model.name in PAPER_SPECS else "auto"
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
        if arch == "paper":
            specs_of = PAPER_SPECS.get(model.name)
            if specs_of is None:
                raise ModinvError(
                    f"arch='paper' exists for {', '.join(sorted(PAPER_SPECS))}, not {model.name!r}; "
                    "use arch='auto' for any other staged model"
                )
        else:
            specs_of = auto.auto_specs
        specs = specs_of(shapes, _probe_context(model), variants, chosen)
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
        return cls(components, layout, meta).to(model.device)

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
                    f"the component for {stage!r} maps {_fmt_shape(meta['in_shape'])} -> "
                    f"{_fmt_shape(meta['out_shape'])}, but this chain needs {_fmt_shape(shapes[stage])} -> "
                    f"{_fmt_shape(shapes[self.previous(stage)])}"
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
            manifest = read_manifest(component)
            why = layout_mismatch(manifest, self.layout)
            if why:
                raise ModinvError(f"cannot take {stage!r} from {str(component)!r}: {why}")
            self._warn_weights(manifest, f"{stage!r} from {str(component)!r}")
            if stage not in manifest.get("components", {}):
                raise ModinvError(f"{str(component)!r} holds no component for stage {stage!r}")
            component, loaded = load_component(component, stage, self._device() or "cpu")
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

    def reconstruct(self, trace: Trace, stage: str) -> Tensor:
        """Images from ``trace[stage]`` through the components ``stage, ..., first`` (Eq. 2):
        float32 B×3×H×W in [0, 1]."""
        path = self.path(stage)
        x = self._stage_of(trace, stage)
        for s in path:
            x = self.components[s](x, trace.context)
        return x.float()

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
        from stage j to the image is components j..1, so per stage ``sum_{i<=j} p_i``, and the
        ``"total"`` over stages (the paper's (n+1)p/2 for equal-sized components)."""
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
        """Write the chain to directory ``path`` (created if needed), all its files replaced together.

        ``metrics`` / ``training``: per stage, e.g. ``{"enc": {"val_mse": 0.012}}`` /
        ``{"enc": {"steps": 20000}}``, or one flat dict (keys not all stage names) for every
        component, e.g. ``{"steps": 20000}``; they are merged into the components' metadata.
        """
        from safetensors.torch import save_file

        for name, extra in (("metrics", metrics), ("training", training)):
            for stage, values in self._per_stage(extra, name).items():
                self.component_meta[stage][name].update(copy.deepcopy(dict(values)))
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        # Every file is first written under a temporary name, and only when all are complete are they
        # renamed into place (the manifest last): a process killed while saving (training rewrites
        # best/ at every improvement) leaves the previous chain readable, not new weights next to an
        # old <stage>.json whose checksum no longer matches; the renames take microseconds.
        staged: list[tuple[Path, Path]] = []

        def stage_file(final: Path, write) -> Path:
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            staged.append((tmp, final))
            write(tmp)
            return tmp

        try:
            entries = {}
            for stage in self.stages:
                module = self.components[stage]
                state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
                weights_file = _stage_file(directory, stage, ".safetensors")
                # one metadata key: safetensors writes several in a random order, one keeps files reproducible
                header = {"modinv": json.dumps({"stage": stage, "kind": module.config["kind"], "model": self.model_name})}
                write = lambda tmp, state=state, header=header: save_file(state, str(tmp), metadata=header)  # noqa: E731
                digest = {"sha256": _sha256(stage_file(weights_file, write))}
                meta = copy.deepcopy(self.component_meta[stage])
                meta["config"] = copy.deepcopy(module.config)
                meta |= {"format": FORMAT, "format_version": FORMAT_VERSION, "modinv_version": _version(),
                         "model": self.model_name, "weights": self.layout.get("weights"),
                         "file": weights_file.name, "sha256": digest["sha256"],
                         "parameters": sum(p.numel() for p in module.parameters())}
                stage_file(_stage_file(directory, stage, ".json"), lambda tmp, meta=meta: _dump_json(tmp, meta))
                entries[stage] = {k: meta[k] for k in ("file", "kind", "seed", "variant", "arch", "parameters", "sha256")}
            try:
                full_path = self.full_path_parameters()
            except ModinvError:
                full_path = None
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "modinv_version": _version(),
                **{k: copy.deepcopy(v) for k, v in self.layout.items() if k != "arch"},
                "arch": self.arch,
                "components": entries,
                "seeds": self.seeds(),
                "variants": {s: self.component_meta[s].get("variant") for s in self.stages},
                "metrics": {s: self.component_meta[s].get("metrics", {}) for s in self.stages},
                "trainable_parameters": self.trainable_parameters(),
                "full_path_parameters": full_path,
            }
            stage_file(directory / MANIFEST, lambda tmp: _dump_json(tmp, manifest))
            for tmp, final in staged:
                os.replace(tmp, final)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return directory

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
    def load(cls, path: str | os.PathLike, model: StagedModel | None = None, map_location: str | torch.device = "cpu",
             components: Mapping[str, str | os.PathLike] | None = None) -> "InverseChain":
        """Rebuild a saved chain from its JSON configs and safetensors weights, in eval mode.

        With ``model`` the chain must have been made for it (same name, stage layout and shapes;
        other weights only warn). ``components={"enc": OTHER_DIR}`` takes those stages' components
        from other saved chains of the same layout (e.g. trained with other seeds).
        """
        directory = Path(path)
        manifest = read_manifest(directory)
        keys = ("model", "weights", "stages", "shapes", "input_size", "arch",
                "training", "classic_stage", "finetune_stage", "lambda", "start_weights", "forward_weights")
        layout = {k: manifest[k] for k in keys if k in manifest}
        for key in ("model", "stages", "shapes"):
            if key not in layout:
                raise ModinvError(f"{str(directory / MANIFEST)!r} lacks {key!r}")
        if model is not None:
            why = layout_mismatch(layout, model_layout(model))
            if why:
                raise ModinvError(f"the inverse chain in {str(directory)!r} does not fit model {model.name!r}: {why}")
        loaded, meta = {}, {}
        for stage in manifest.get("components", {}):
            loaded[stage], meta[stage] = load_component(directory, stage, map_location)
        chain = cls(loaded, layout, meta)
        weights = str(getattr(model, "weights", "")) if model is not None else ""
        if weights and layout.get("weights") and weights != layout["weights"]:
            warnings.warn(f"the inverse chain in {str(directory)!r} was trained on {model.name} weights "
                          f"{layout['weights']!r}; the model has {weights!r}", stacklevel=2)
        for stage, other in (components or {}).items():
            chain.replace(stage, other)
        return chain.to(map_location).eval()


def full_path_parameter_estimate(chain: InverseChain) -> dict[str, int]:
    """Parameters of classic per-stage full-path inverses built from ``chain``'s components, per
    stage and ``"total"`` (see :meth:`InverseChain.full_path_parameters`)."""
    return chain.full_path_parameters()


def full_path_parameter_count(chain: InverseChain) -> int:
    """The total of :func:`full_path_parameter_estimate`: what the classic approach would train."""
    return chain.full_path_parameters()["total"]
