"""The on-disk format of an inverse chain: one folder, a Hugging Face model repository as it stands.

    <stage>.safetensors   the component's weights (one ``modinv`` header entry: stage, kind, model)
    <stage>.json          its config (kind + builder arguments), seed, variant, arch, training,
                          metrics, parameter count and the SHA-256 of its safetensors file
    manifest.json         format and version, model name and weights, stage layout and shapes,
                          input size, arch, seeds, variants, metrics, parameter counts, and per
                          component its file, kind and the SHA-256 of its two files

Loading rebuilds each component from its JSON config through the registry of kinds and reads its
weights from the safetensors file, after checking the recorded checksums (required; a chain of
format 1 without them loads with one warning) and that every weight is finite: no pickle, no code
from the folder runs. Saving writes every file complete under a temporary name first and renames them
all into place at the end (the manifest last), so an interrupted save leaves the previous chain
readable. Files are written through :mod:`modinv.fileio`.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.fileio import atomic_write, atomic_write_text, os_error_sentence, read_json, sha256_file, to_json, write_json
from modinv.inverse.card import is_generated, model_card, recorded_model_seed
from modinv.inverse.registry import build_component, upgrade_config
from modinv.models.base import IMAGE, StagedModel
from modinv.models.weights import describe_load_error, load_into, seeded

FORMAT = "modinv-inverse-chain"
# 2: every file carries a checksum in the manifest, and a missing one is refused (format-1 chains
# without checksums load with one warning).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# What a manifest says about the model and training a chain was made for (the chain's ``layout``).
LAYOUT_KEYS = ("model", "weights", "model_seed", "stages", "shapes", "input_size", "arch", "training", "classic_stage",
               "finetune_stage", "lambda", "zero_lambda", "start_weights", "forward_weights")
_ENTRY_KEYS = ("file", "kind", "seed", "variant", "arch", "parameters", "sha256")  # per component, in the manifest
_UNCHECKED_WARNED: set[str] = set()  # old chains without checksums: one warning per folder
_DAMAGED = "it is truncated, corrupt or was replaced; save the chain again"


def _version() -> str:
    from modinv import __version__

    return __version__


# -- layouts: what a chain was made for ----------------------------------------------------------------

def model_layout(model: StagedModel) -> dict[str, Any]:
    """Model name, weights id, stage layout, per-sample stage shapes and input size of ``model``."""
    shapes = model.stage_shapes()
    layout = {
        "model": model.name,
        "weights": str(getattr(model, "weights", "unknown")),
        "stages": list(model.all_stages),
        "shapes": {s: list(shapes[s]) for s in model.all_stages},
        "input_size": list(model.input_size),
    }
    if layout["weights"] == "random" and isinstance(getattr(model, "seed", None), int):
        layout["model_seed"] = model.seed  # random weights of another seed are another network
    return layout


def model_seed_mismatch(made_for: Mapping[str, Any], model: StagedModel) -> str | None:
    """Why a chain made for random weights of one seed does not fit a model of random weights of
    another (None when it fits, or when either does not say)."""
    theirs, mine = recorded_model_seed(made_for), getattr(model, "seed", None)
    if made_for.get("weights") != "random" or str(getattr(model, "weights", "")) != "random":
        return None
    if isinstance(theirs, int) and isinstance(mine, int) and theirs != mine:
        return (f"it was trained on random {made_for.get('model')} weights of seed {theirs}, but the model has random "
                f"weights of seed {mine} (another network); load the model with seed {theirs}")
    return None


def fmt_shape(shape: Sequence[int]) -> str:
    """``"300×256"``."""
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
        return (f"it was made for input size {fmt_shape(size_a)}, but the model takes {fmt_shape(size_b)} "
                f"(another input size; load the model at {fmt_shape(size_a)})")
    a, b = made_for.get("shapes", {}), other.get("shapes", {})
    for stage in made_for.get("stages", []):
        if list(a.get(stage, [])) != list(b.get(stage, [])):
            return (f"it was made for stage {stage!r} of shape {fmt_shape(a.get(stage, []))}, but here it is "
                    f"{fmt_shape(b.get(stage, []))} (another input size?)")
    return None


def layout_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The layout entries of a manifest (what :class:`InverseChain` keeps as ``chain.layout``)."""
    return {k: copy.deepcopy(manifest[k]) for k in LAYOUT_KEYS if k in manifest}


# -- the manifest --------------------------------------------------------------------------------------

def stage_file(directory: Path, stage: str, suffix: str) -> Path:
    """``directory/<stage><suffix>``, refusing stage names that would leave the folder."""
    if not stage or "/" in stage or os.sep in stage or stage.startswith("."):
        raise ModinvError(f"stage name {stage!r} cannot name a file; rename the stage")
    return directory / f"{stage}{suffix}"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a saved chain folder, checked for format and for the fields loading relies on."""
    directory = Path(path)
    file = directory / MANIFEST
    if not file.is_file():
        raise ModinvError(
            f"{str(directory)!r} holds no {MANIFEST}: not a saved inverse chain (write one with chain.save)"
        )
    manifest = read_json(file, "manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModinvError(f"{str(file)!r} is not an inverse-chain manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModinvError(f"{str(file)!r} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ModinvError(f"{str(directory)!r} was written by a newer modinv (format {version}); upgrade modinv")
    problem = _manifest_problem(manifest)
    if problem:
        raise ModinvError(f"{str(file)!r} is malformed: {problem}")
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
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return "'files' is not a mapping of file names to checksums"
    components = manifest.get("components", {})
    if not isinstance(components, dict) or not all(isinstance(k, str) for k in components):
        return "'components' is not a mapping of stage names"
    unknown = [s for s in components if s not in stages or s == IMAGE]
    if unknown:
        return f"it lists components for {unknown}, which are not among its stages {stages}"
    bad = [s for s, e in components.items() if not isinstance(e, dict)
           or not all(isinstance(e.get(k, ""), str) for k in ("sha256", "config_sha256"))]
    if bad:
        return f"the entries of {bad} under 'components' are not mappings with a 'sha256' text"
    if manifest.get("format_version", 0) >= 2:
        unchecked = [s for s, e in components.items() if not (e.get("sha256") and e.get("config_sha256"))]
        if unchecked:
            return f"the entries of {unchecked} under 'components' lack their checksums ('sha256', 'config_sha256')"
    return None


def record_file_checksum(directory: str | os.PathLike, name: str) -> None:
    """Add the SHA-256 of ``directory/name``, a file written next to a saved chain (a fine-tuned
    model's ``forward.safetensors``), to the chain's manifest under ``"files"``: loading it checks it."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest.setdefault("files", {})[name] = sha256_file(directory / name)
    write_json(directory / MANIFEST, manifest)


# -- one component -------------------------------------------------------------------------------------

def load_component(path: str | os.PathLike, stage: str, map_location: str | torch.device = "cpu",
                   manifest: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """One component of a saved chain: ``(module, metadata)``, rebuilt from JSON + safetensors only.

    The weights file must match the checksum of its ``<stage>.json`` and of the ``manifest``
    (read from ``path`` when not given).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(path)
    manifest = read_manifest(directory) if manifest is None else manifest
    entry = manifest.get("components", {}).get(stage)
    if entry is None:
        raise ModinvError(f"{str(directory)!r} holds no component for stage {stage!r}")
    json_file, weights_file = stage_file(directory, stage, ".json"), stage_file(directory, stage, ".safetensors")
    if json_file.is_file() and entry.get("config_sha256"):
        _check_digest(json_file, sha256_file(json_file), entry["config_sha256"], MANIFEST, "component file")
    meta = read_json(json_file, "component file")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ModinvError(f"{str(json_file)!r} holds no component config")
    if not weights_file.is_file():
        raise ModinvError(f"weights file {str(weights_file)!r} is missing")
    if not (meta.get("sha256") and entry.get("sha256")):
        if manifest.get("format_version", 0) >= 2:
            raise ModinvError(f"{str(json_file)!r} lacks the checksum of its weights ('sha256'): {_DAMAGED}")
        _warn_unchecked(directory)
    digest = sha256_file(weights_file)
    _check_digest(weights_file, digest, meta.get("sha256"), json_file.name)
    try:
        state = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModinvError(
            f"cannot read weights file {str(weights_file)!r} (corrupt or truncated, or not a safetensors file: "
            f"{describe_load_error(exc)})"
        ) from None
    # after the reader: a file forged to match its JSON is refused by the reader if it can be
    _check_digest(weights_file, digest, entry.get("sha256"), MANIFEST)
    _check_finite(state, weights_file)
    config = upgrade_config(meta["config"])
    _check_config_fits(config, state, weights_file)
    try:
        with seeded(0):  # random init is overwritten; keep the caller's RNG untouched
            module = build_component(config)
    except ModinvError:
        raise
    except Exception as exc:  # an edited config the builder cannot take
        raise ModinvError(
            f"cannot rebuild the component of {str(json_file)!r} from its config ({describe_load_error(exc)})"
        ) from None
    load_into(module, state, str(weights_file))
    return module.to(map_location), meta


def _check_digest(file: Path, digest: str, expected: Any, where: str, what: str = "weights file") -> None:
    if expected and digest != expected:
        raise ModinvError(f"{what} {str(file)!r} does not match the checksum in {where}: {_DAMAGED}")


def _warn_unchecked(directory: Path) -> None:
    """One warning per folder for a chain written before checksums were required (format 1)."""
    key = str(directory.resolve())
    if key not in _UNCHECKED_WARNED:
        _UNCHECKED_WARNED.add(key)
        warnings.warn(f"the inverse chain in {str(directory)!r} has no checksums (an older modinv wrote it), so "
                      "damage to its files cannot be detected; save it again to add them", UserWarning, stacklevel=4)


def _check_finite(state: Mapping[str, Tensor], weights_file: Path) -> None:
    """Refuse weights holding NaN or infinities: every number computed from them would be n/a."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModinvError(f"weights file {str(weights_file)!r} holds NaN or infinite values (in {name}): the "
                              "component diverged or was damaged; retrain it (e.g. with a lower --lr) or use an "
                              "earlier checkpoint")


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
        detail = f"{key} is {fmt_shape(found[key])} in the file, {fmt_shape(expected[key])} by the config"
    raise ModinvError(f"weights in {str(weights_file)!r} do not fit their config: {detail}")


# -- a whole chain -------------------------------------------------------------------------------------

def save_chain(path: str | os.PathLike, components: Mapping[str, nn.Module],
               metas: Mapping[str, Mapping[str, Any]], fields: Mapping[str, Any]) -> Path:
    """Write folder ``path``: per stage of ``components`` its safetensors file and ``<stage>.json``
    (``metas[stage]`` + config + checksum), then ``manifest.json`` (``fields`` + format + component
    entries). All files are replaced together; returns the folder."""
    from safetensors.torch import save_file

    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, directory, "create")) from None
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "modinv_version": _version()}
    # Every file is first written complete under a temporary name, and only when all are complete are they
    # renamed into place (the manifest last): a process killed while saving (training rewrites
    # best/ at every improvement) leaves the previous chain readable, not new weights next to an
    # old <stage>.json whose checksum no longer matches; the renames take microseconds.
    staged: list[tuple[Path, Path]] = []

    def stage_write(final: Path, write: Callable[[Path], Any]) -> Path:
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        staged.append((tmp, final))
        write(tmp)
        return tmp

    try:
        entries, written = {}, {}
        for stage, module in components.items():
            state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
            weights_file = stage_file(directory, stage, ".safetensors")
            # one metadata key: safetensors writes several in a random order, one keeps files reproducible
            info = {"modinv": to_json({"stage": stage, "kind": module.config["kind"], "model": fields["model"]},
                                      indent=None)}
            tmp = stage_write(weights_file, lambda t, s=state, i=info: atomic_write(
                t, lambda u: save_file(s, str(u), metadata=i)))
            meta = copy.deepcopy(dict(metas[stage])) | {"config": copy.deepcopy(module.config)} | header | {
                "model": fields["model"], "weights": fields.get("weights"), "file": weights_file.name,
                "sha256": sha256_file(tmp), "parameters": sum(p.numel() for p in module.parameters())}
            json_tmp = stage_write(stage_file(directory, stage, ".json"), lambda t, m=meta: write_json(t, m))
            entries[stage] = {k: meta.get(k) for k in _ENTRY_KEYS} | {"config_sha256": sha256_file(json_tmp)}
            written[stage] = meta
        manifest = header | copy.deepcopy(dict(fields)) | {"components": entries}
        readme = directory / "README.md"  # the model card; a card a person wrote is kept
        if not readme.is_file() or is_generated(readme.read_text(encoding="utf-8", errors="replace")):
            card = model_card(manifest, written)
            stage_write(readme, lambda t: atomic_write_text(t, card))  # synced like the others
        stage_write(directory / MANIFEST, lambda t: write_json(t, manifest))
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, directory)) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return directory
