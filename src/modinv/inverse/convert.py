"""Checkpoints of the authors' research code (github ``wiskott-lab/inverse-tvm``) as modinv chains.

Their inverse modules are modinv's ``arch="paper"`` components with other parameter names (and,
for the local bb⁻¹, 1×1 transposed convolutions where modinv has 1×1 convolutions). This module
renames a state dict of theirs into the keys of the matching modinv component, finds which stage
of a model each checkpoint inverts (by its names and shapes), and writes a normal chain folder.

Their files are torch pickles: they are read with ``torch.load(weights_only=True)`` only, which
refuses anything but tensors and plain containers; ``.safetensors`` files are read as they are.
Nothing of theirs is imported.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse.registry import build_component

SOURCES = ("inverse-tvm",)
StateDict = dict[str, Tensor]

# The authors' layer names in forward order, for the convolutional and MLP kinds (their classes
# EnhancedBatchNormalizedConvolutionalDecoder, LinearDecoderEnhanced, EnhancedVitBackbone,
# SwinBackbone, InverseDetector); modinv's layers of the same kind come in the same order.
_LAYERS: dict[str, list[str]] = {
    "detr.bb": ["up_conv_1", "bn_1", "up_conv_2", "bn_2", "up_conv_2_2", "bn_2_2", "up_conv_2_3", "bn_2_3",
                "up_conv_3", "bn_3", "up_conv_4", "bn_4", "up_conv_5", "bn_5", "up_conv_6", "bn_6", "final_conv"],
    "detr.bb_local": ["up_conv_1", "up_conv_2", "up_conv_3", "up_conv_4", "up_conv_5"],
    "vit.bb": ["up_conv_1", "bn_1", "up_conv_2", "bn_2", "up_conv_3", "bn_3", "up_conv_4"],
    "swin.bb": ["up_conv_1", "bn_1", "up_conv_2", "bn_2"],
    "detr.pred": [f"inverse_classifier_regressor.fc{i}" for i in (1, 2, 3)],
}
# Renames (regex -> replacement) for the transformer kinds, tried in order on every key.
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "detr.enc": [(r"^layers\.(\d+)\.(self_attn|norm1|norm2)\.", r"encoder.layers.\1.\2."),
                 (r"^layers\.(\d+)\.(linear[12])\.", r"encoder.layers.\1.ffn.\2."),
                 (r"^norm\.", "encoder.norm.")],
    "detr.dec": [(r"^layers\.(\d+)\.(self_attn|norm1|norm2|norm3)\.", r"decoder.layers.\1.\2."),
                 (r"^layers\.(\d+)\.multihead_attn\.", r"decoder.layers.\1.cross_attn."),
                 (r"^layers\.(\d+)\.(linear[12])\.", r"decoder.layers.\1.ffn.\2."),
                 (r"^norm\.", "decoder.norm."), (r"^query_embed\.", "memory_pos.")],
    "vit.enc": [(r"^blocks\.(\d+)\.(norm1|norm2)\.", r"encoder.layers.\1.\2."),
                (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"encoder.layers.\1.self_attn.in_proj_\2"),
                (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.out_proj."),
                (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"encoder.layers.\1.ffn.linear\2.")],
    "swin.stage": [(r"^blocks\.", "blocks."), (r"^upsample\.norm\.", "split.norm."),
                   (r"^upsample\.expansion\.", "split.expand.")],
}
# Buffers timm rebuilds itself (not persistent in timm 1.x); older checkpoints may hold them.
_DERIVED = re.compile(r"(relative_position_index|attn_mask)$")


def _layers_in_order(module: nn.Module) -> list[str]:
    """Names of ``module``'s submodules that hold parameters or buffers of their own, in order."""
    return [name for name, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]


def _by_layers(kind: str, theirs: Mapping[str, Tensor], target: nn.Module) -> StateDict:
    ours = _layers_in_order(target)
    names = _LAYERS[kind]
    if len(ours) != len(names):
        raise ModinvError(f"modinv's {kind} has {len(ours)} layers, the authors' {len(names)}")
    prefix = dict(zip(names, ours))
    out: StateDict = {}
    for key, value in theirs.items():
        layer, _, leaf = key.rpartition(".")
        if layer not in prefix:
            raise ModinvError(f"the authors' {kind} has no layer {layer!r}")
        if kind == "detr.bb_local" and leaf == "weight" and layer != names[-1]:
            value = value.transpose(0, 1)  # their 1×1 ConvTranspose2d (in, out) is our 1×1 Conv2d (out, in)
        out[f"{prefix[layer]}.{leaf}"] = value
    return out


def _by_renames(kind: str, theirs: Mapping[str, Tensor]) -> StateDict:
    out: StateDict = {}
    for key, value in theirs.items():
        for pattern, replacement in _RENAMES[kind]:
            new, n = re.subn(pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            raise ModinvError(f"the authors' {kind} has no parameter {key!r}")
    return out


def convert_state_dict(config: Mapping[str, Any], theirs: Mapping[str, Tensor]) -> StateDict:
    """The authors' state dict of one inverse module, renamed for the modinv component of ``config``
    (``{"kind": ..., **arguments}``), checked name by name and shape by shape against it."""
    kind = config.get("kind")
    if kind not in _LAYERS and kind not in _RENAMES:
        raise ModinvError(f"the authors' code has no counterpart of modinv's {kind!r} components")
    with torch.device("meta"):
        target = build_component(dict(config))
    expected = {k: v.shape for k, v in target.state_dict().items()}
    theirs = {k: v for k, v in theirs.items() if not (_DERIVED.search(k) and k not in expected)}
    mapped = _by_layers(kind, theirs, target) if kind in _LAYERS else _by_renames(kind, theirs)
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected))
    if missing or extra:
        raise ModinvError(f"its parameters do not match modinv's {kind} (missing {missing[:3]}, extra {extra[:3]})")
    wrong = [k for k in expected if tuple(mapped[k].shape) != tuple(expected[k])]
    if wrong:
        k = wrong[0]
        raise ModinvError(f"its {k!r} is {tuple(mapped[k].shape)}, modinv's {kind} needs {tuple(expected[k])}")
    return {k: mapped[k].detach().clone().contiguous() for k in expected}


def _fail(path: Path, why: str) -> ModinvError:
    return ModinvError(f"{str(path)!r} {why}")


def read_checkpoint(path: str | os.PathLike) -> dict[str, StateDict]:
    """The state dicts in one file of theirs, by the key they were saved under (``""`` for a bare
    state dict): a ``model_states`` checkpoint, a saved ``state_dict()``, or a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated, edited or foreign file: torch/safetensors say why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(path, f"is not a readable weights-only checkpoint ({first[:160]})") from None
    if isinstance(data, Mapping) and isinstance(data.get("model_states"), Mapping):
        states = dict(data["model_states"])
    else:
        states = {"": data}
    for key, sd in states.items():
        if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
            raise _fail(path, f"holds no state dict of tensors under {key or 'its top level'!r}")
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise _fail(path, f"holds non-finite values in {bad[0]!r}")
    return {k: dict(v) for k, v in states.items()}


def _candidates(model: Any, variants: Mapping[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(stage, variant, config)`` of every paper component of ``model``, each bb⁻¹ variant included."""
    from modinv.inverse.chain import probe_context, model_layout
    from modinv.inverse.registry import paper_specs_of

    family = model.meta.inverse_family
    if not family:
        raise ModinvError(f"model {model.name!r} has no paper components, so no checkpoint of the authors fits it")
    shapes = {s: tuple(v) for s, v in model_layout(model)["shapes"].items()}
    context = probe_context(model)
    specs_of = paper_specs_of(family)
    out, seen = [], set()
    for bb in ("standard", "local"):
        try:
            specs = specs_of(shapes, context, {**variants, model.stages[0]: bb} if bb == "local" else variants)
        except ModinvError:
            continue
        for stage, spec in specs.items():
            key = (stage, spec["config"]["kind"])
            if key not in seen and spec["config"]["kind"] != "vit.bb_analytic":
                seen.add(key)
                out.append((stage, spec["variant"], spec["config"]))
    return out


def match_checkpoints(model: Any, paths: Sequence[str | os.PathLike],
                      variants: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config", "variant", "state_dict", "source"}}``: the stage of ``model`` whose paper
    component each state dict in ``paths`` fits; a file that fits none is refused in one sentence."""
    if not paths:
        raise ModinvError("give at least one checkpoint of the authors' code")
    variants = dict(variants or {})
    candidates = _candidates(model, variants)
    found: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        for key, theirs in read_checkpoint(path).items():
            fits = []
            for stage, variant, config in candidates:
                try:
                    fits.append((stage, variant, config, convert_state_dict(config, theirs)))
                except ModinvError:
                    continue
            where = f" (under {key!r})" if key else ""
            if not fits:
                raise _fail(path, f"holds{where} no inverse-tvm component of {model.name!r} (its parameters fit none "
                                  f"of {', '.join(sorted({c[0] for c in candidates}))})")
            stage, variant, config, sd = fits[0]
            if stage in found:
                raise _fail(path, f"holds{where} a second {stage} component (the first came from "
                                  f"{found[stage]['source']['file']!r})")
            found[stage] = {"config": config, "variant": variant, "state_dict": sd,
                            "source": {"from": "inverse-tvm", "file": path.name, "key": key, "sha256": digest}}
    return found


def convert(model: Any, paths: Sequence[str | os.PathLike], out: str | os.PathLike, source: str = "inverse-tvm",
            variants: Mapping[str, str] | None = None, on_stage: Callable[[str, str], None] | None = None) -> Path:
    """Write the authors' checkpoints ``paths`` as a chain folder ``out`` for ``model`` (manifest,
    checksums, model card, as :meth:`InverseChain.save`); every file is checked before anything is
    written. ``variants``: e.g. ``{"pred": "fd"}`` (their pred⁻¹ one-hot encodes: default ``"oh"``)."""
    from modinv.inverse.chain import InverseChain

    if source not in SOURCES:
        raise ModinvError(f"unknown checkpoint source {source!r}; valid: {', '.join(SOURCES)}")
    variants = dict(variants or {})
    if model.meta.inverse_family == "detr":
        variants.setdefault("pred", "oh")
    found = match_checkpoints(model, paths, variants)
    bb = model.stages[0]
    if bb in found and found[bb]["variant"] != "standard":
        variants[bb] = found[bb]["variant"]
    chain = InverseChain.build(model, arch="paper", stages=list(found), variants=variants)
    for stage, item in found.items():
        component = chain.component(stage)
        if component.config != build_component(dict(item["config"])).config:
            raise ModinvError(f"stage {stage!r}: the matched component differs from the chain's ({item['config']})")
        component.load_state_dict({k: v.to(model.device) for k, v in item["state_dict"].items()})
        chain.component_meta[stage]["seed"] = None
        if on_stage is not None:
            on_stage(stage, item["source"]["file"])
    chain.eval()
    return chain.save(out, training={s: {"converted_from": found[s]["source"]} for s in found})
