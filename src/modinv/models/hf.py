"""Any Hugging Face transformers vision backbone, staged at its hidden states (``hf:<id or folder>``).

``load_model("hf:google/vit-base-patch16-224")`` or ``load_model("hf:/path/to/save_pretrained/dir")``
wraps a ViT, DeiT, DINOv2, CLIP or SigLIP vision tower, Swin, … (a composite CLIP/SigLIP
checkpoint gives its vision tower). Stages are the model's own ``output_hidden_states``:

- ``emb``: hidden state 0, what enters the first layer (the embeddings; for CLIP after its
  pre-LayerNorm, as transformers reports it);
- ``h<i>``: hidden state i, the output of layer i (Swin: of stage i, after its patch merging).
  ``hidden_states=[…]`` picks them (1 … L, negative counts from the end); the default is a handful
  spread over the depth: ``ceil(L·k/4)`` for k = 1 … 4 (ViT-B: h3, h6, h9, h12).

Token models keep B×N×D (``trace.context`` holds ``grid``, ``num_prefix_tokens`` and, where the
model has one position embedding per token, ``pos_embed``). Hierarchical models whose outputs carry
``reshaped_hidden_states`` (Swin) are staged as those: **B×C×H×W** maps, the layout transformers
itself reshapes them to and the one ``arch="auto"`` components read as feature maps. The trace equals
``output_hidden_states`` (reshaped for Swin) because it is taken by the same kind of hook on the same
layers that transformers records; ``run`` replaces a layer's output with the edited stage.

Input: images in [0, 1] at the config's ``image_size``, normalised inside with ``image_mean`` /
``image_std`` of the ``preprocessor_config.json`` saved beside the model, else ImageNet's
statistics. ``weights``: ``"pretrained"`` (the saved weights: the folder, or the hub id through the
local cache first), ``"random"`` (the config's initialisation under ``seed``) or the path of a
state dict file of the same model. ``output()`` is the classifier's logits for
``…ForImageClassification`` checkpoints (``meta.class_names`` from ``id2label``), else the pooled
output (or the last hidden state).
"""

from __future__ import annotations

import inspect
import os
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError, WeightsUnavailableError, brief
from modinv.fileio import read_json
from modinv.models.base import IMAGE, ModelMeta, StagedModel, Trace
from modinv.models.family import Family, register_family
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.roles import TokenGrid
from modinv.models.weights import from_hub, is_path, load_into, load_state_file, seeded

PREPROCESSOR = "preprocessor_config.json"
EMBEDDINGS = "emb"


class _Stop(Exception):
    """Raised by the hook of the last wanted stage to cut the forward pass short."""


def _recorded_layers(net: nn.Module) -> tuple[list[nn.Module], int]:
    """The layers whose outputs transformers records as hidden states 1 … L (in order), and the
    index of the hidden state in a layer's tuple output."""
    from transformers.utils.output_capturing import OutputRecorder

    recordable = [getattr(type(m), "_can_record_outputs", None) or {} for m in net.modules()]
    spec = next((r["hidden_states"] for r in recordable if "hidden_states" in r), None)
    spec = spec[0] if isinstance(spec, list) else spec
    if spec is None:
        raise ModinvError(f"{type(net).__name__} does not record hidden states; it cannot be staged with hf:")
    if not isinstance(spec, OutputRecorder):
        spec = OutputRecorder(target_class=None if isinstance(spec, str) else spec, index=0,
                              class_name=spec if isinstance(spec, str) else None)
    if not spec.capture_initial_hidden_state:
        raise ModinvError(f"{type(net).__name__} does not report its embeddings as hidden state 0")
    layers = [
        m for path, m in net.named_modules()
        if ((spec.target_class is not None and isinstance(m, spec.target_class))
            or (spec.class_name is not None and path.endswith(spec.class_name)))
        and (spec.layer_name is None or f".{spec.layer_name.strip('.')}." in f".{path}.")
    ]
    if not layers:
        raise ModinvError(f"found no layers of {type(net).__name__} that record hidden states")
    return layers, spec.index


def default_indices(num_layers: int) -> list[int]:
    """A handful of hidden states spread over the depth: ``ceil(L·k/4)``, k = 1 … 4."""
    return sorted({math.ceil(num_layers * k / 4) for k in range(1, 5)})


def _indices(chosen: Sequence[int] | int | None, num_layers: int) -> list[int]:
    if chosen is None:
        return default_indices(num_layers)
    chosen = [chosen] if isinstance(chosen, int) else list(chosen)
    out = []
    for i in chosen:
        if not isinstance(i, int) or not -num_layers <= i <= num_layers or i == 0:
            raise ModinvError(f"hidden_states picks layers 1 … {num_layers} (or -1 … -{num_layers}); got {i!r}")
        out.append(i if i > 0 else num_layers + 1 + i)
    if out != sorted(set(out)):
        raise ModinvError(f"hidden_states must be distinct and in increasing order, got {chosen}")
    return out


class HfStagedModel(StagedModel):
    """A transformers vision model staged at ``emb`` and the hidden states ``indices`` (1 … L)."""

    def __init__(self, net: nn.Module, indices: Sequence[int] | int | None, input_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], name: str, class_names: tuple[str, ...] | None):
        super().__init__()
        self.net = net
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._layers, self._index = _recorded_layers(net)
        self.hidden_indices = [0] + _indices(indices, len(self._layers))
        self.stages = (EMBEDDINGS,) + tuple(f"h{i}" for i in self.hidden_indices[1:])
        self.set_normalization(mean, std)
        self._maps: dict[int, tuple[int, int]] = {}  # hidden index -> (H, W) of hierarchical models
        self._context: dict[str, Any] = {}
        self._embedding_params: list[nn.Parameter] = []
        self._probe()
        self.meta = ModelMeta(
            task="classification" if class_names else None, class_names=class_names,
            mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
            num_prefix_tokens=int(self._context.get("num_prefix_tokens", 0)),
            stage_layouts={s: "nchw" if k in self._maps else "tokens" for s, k in zip(self.stages, self.hidden_indices)},
        )

    # -- the forward pass with hooks -------------------------------------------------------------
    def _call(self, images: Tensor) -> Any:
        return self.net(pixel_values=self.normalize(images), **self._call_options)

    def _to_model(self, k: int, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2) if k in self._maps else x

    def _from_model(self, k: int, x: Tensor) -> Tensor:
        if k not in self._maps:
            return x
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self._maps[k])

    def _hook(self, k: int, fn: Callable[[Tensor], Tensor | None]):
        """A hook at hidden state ``k`` (layer k's output; the first layer's input for 0) calling
        ``fn(hidden state)``; a tensor it returns replaces the hidden state."""
        if k == 0:
            def pre(module, args):
                new = fn(args[0])
                return None if new is None else (new, *args[1:])
            return self._layers[0].register_forward_pre_hook(pre)

        def post(module, args, output):
            tup = isinstance(output, tuple)
            new = fn(output[self._index] if tup else output)
            if new is None or not tup:
                return new
            return output[: self._index] + (new,) + output[self._index + 1:]
        return self._layers[k - 1].register_forward_hook(post)

    def _forward(self, images: Tensor, replace: tuple[int, Tensor] | None,
                 capture: Sequence[int]) -> tuple[Any, dict[int, Tensor]]:
        """``(output, {k: hidden state k for k in capture})`` of the model on ``images`` with hidden
        state ``replace[0]`` replaced by ``replace[1]`` (model layout); with ``capture`` the pass
        stops after its last hidden state (output None)."""
        captured: dict[int, Tensor] = {}
        handles = []

        def replacer(h: Tensor) -> Tensor:
            value = replace[1]
            if tuple(value.shape) != tuple(h.shape):
                raise ModinvError(f"an edited stage must keep its shape: got {tuple(value.shape)}, the model "
                                  f"has {tuple(h.shape)} there")
            return value.to(dtype=h.dtype, device=h.device).clone()  # in-place ops must not reach the trace

        def capturer(k: int, last: bool):
            def fn(h: Tensor) -> None:
                captured[k] = h.clone()
                if last:
                    raise _Stop
            return fn

        if replace is not None:
            handles.append(self._hook(replace[0], replacer))
        for j, k in enumerate(capture):
            handles.append(self._hook(k, capturer(k, j == len(capture) - 1)))
        try:
            out = self._call(images)
        except _Stop:
            out = None
        finally:
            for h in handles:
                h.remove()
        return out, captured

    def _advance(self, stages: dict[str, Tensor], start: str, end: str, context: dict[str, Any]) -> dict[str, Tensor]:
        if IMAGE not in stages:
            raise ModinvError(f"model {self.name!r} recomputes stages from the image; the trace must keep {IMAGE!r}")
        i, j = self.stage_index(start), self.stage_index(end)
        wanted = self.hidden_indices[i: j]  # stage n is hidden_indices[n - 1]
        replace = None
        if start != IMAGE:
            k = self.hidden_indices[i - 1]
            replace = (k, self._to_model(k, stages[start]))
        _, captured = self._forward(stages[IMAGE], replace, wanted)
        return {self.stages[self.hidden_indices.index(k)]: self._from_model(k, h) for k, h in captured.items()}

    def prepare(self, images: Tensor) -> dict[str, Any]:
        return dict(self._context)

    # -- what the interface asks ---------------------------------------------------------------------
    def output(self, trace: Trace) -> Tensor:
        """Class logits of a classifier; else the pooled output (or the last hidden state)."""
        last = self.stages[-1]
        k = self.hidden_indices[-1]
        out, _ = self._forward(trace[IMAGE], (k, self._to_model(k, trace[last])), [])
        for key in ("logits", "pooler_output", "last_hidden_state"):
            value = getattr(out, key, None)
            if value is not None:
                return value
        raise ModinvError(f"{type(self.net).__name__} returned no logits, pooled output or last hidden state")

    def token_stages(self) -> dict[str, TokenGrid]:
        """Every token stage of a model with a patch grid; ``emb`` holds the position embedding
        (when the model has one per token), the layers' outputs no explicit position."""
        grid = self._context.get("grid")
        if grid is None:
            return {}
        prefix = int(self._context.get("num_prefix_tokens", 0))
        embedded = "embedded" if "pos_embed" in self._context else None
        return {s: TokenGrid(tuple(grid), prefix, position=embedded if s == EMBEDDINGS else None)
                for s in self.stages if self.meta.stage_layouts.get(s) == "tokens"}

    def token_position(self, trace: Trace, stage: str) -> Tensor | None:
        pos = trace.context.get("pos_embed") if stage == EMBEDDINGS else None
        if pos is None:
            return None
        return pos.reshape(1, -1, pos.shape[-1])[:, int(self._context.get("num_prefix_tokens", 0)):]

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        modules = {EMBEDDINGS: [nn.ParameterList(self._embedding_params)]}
        for prev, k, stage in zip(self.hidden_indices[:-1], self.hidden_indices[1:], self.stages[1:]):
            modules[stage] = list(self._layers[prev:k])
        return modules

    # -- one dry run: layouts, context, embedding parameters -------------------------------------------
    def _probe(self) -> None:
        config = self.net.config
        self._call_options: dict[str, Any] = {}
        size = config.image_size if hasattr(config, "image_size") else self.input_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(size) != self.input_size and "interpolate_pos_encoding" in inspect.signature(self.net.forward).parameters:
            self._call_options["interpolate_pos_encoding"] = True  # position embeddings resampled to input_size
        params: dict[int, nn.Parameter] = {}
        started = [False]

        def first_layer(module, args):
            started[0] = True

        def any_module(module, args):
            if not started[0]:
                for p in module.parameters(recurse=False):
                    params.setdefault(id(p), p)

        handles = [m.register_forward_pre_hook(any_module) for m in self.net.modules()]
        handles.append(self._layers[0].register_forward_pre_hook(first_layer, prepend=True))
        blank = torch.zeros(1, 3, *self.input_size, device=self.mean.device)
        try:
            with torch.no_grad():
                out = self.net(pixel_values=self.normalize(blank), output_hidden_states=True, **self._call_options)
        except Exception as exc:
            raise ModinvError(f"{type(self.net).__name__} does not run on {self.input_size[0]}×"
                              f"{self.input_size[1]} images ({brief(exc)})") from None
        finally:
            for h in handles:
                h.remove()
        self._embedding_params = list(params.values())
        maps = getattr(out, "reshaped_hidden_states", None)
        if maps is not None:
            self._maps = {k: tuple(m.shape[-2:]) for k, m in enumerate(maps)}
            return
        self._token_context(out.hidden_states[0], config)

    def _token_context(self, emb: Tensor, config: Any) -> None:
        patch = getattr(config, "patch_size", None)
        patch = (patch, patch) if isinstance(patch, int) else patch
        if not patch:
            return
        grid = (self.input_size[0] // patch[0], self.input_size[1] // patch[1])
        prefix = emb.shape[1] - grid[0] * grid[1]
        if prefix < 0:
            return
        self._context = {"grid": grid, "num_prefix_tokens": prefix}
        embeddings = getattr(self.net.base_model, "embeddings", None)
        pos = getattr(embeddings, "position_embeddings", None)
        pos = getattr(getattr(embeddings, "position_embedding", None), "weight", pos)
        if isinstance(pos, Tensor) and pos.shape[-2:] == emb.shape[1:]:
            self._context["pos_embed"] = pos.detach().reshape(emb.shape[1:])


# -- loading --------------------------------------------------------------------------------------------
def _fetch(source: str, load: Callable[[], Any], what: str) -> Any:
    """``load()`` for a local folder, or through the hub cache first (one sentence offline)."""
    if Path(source).expanduser().is_dir():
        try:
            return load()
        except Exception as exc:
            raise ModinvError(f"cannot load the {what} saved in {source!r} ({brief(exc)})") from None
    how = ("make the Hugging Face hub reachable once (the files are cached), or save the model with "
           "save_pretrained and pass its folder as hf:PATH")
    return from_hub(load, f"Hugging Face model {source!r}", how)


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``image_mean`` / ``image_std`` of the preprocessor config beside the model, else ImageNet's."""
    local = Path(source).expanduser()
    try:
        if local.is_dir():
            path = local / PREPROCESSOR
            cfg = read_json(path, "preprocessor config") if path.is_file() else {}
        else:
            from huggingface_hub import hf_hub_download

            cfg = read_json(_fetch(source, lambda: hf_hub_download(source, PREPROCESSOR), "preprocessor config"))
    except (ModinvError, WeightsUnavailableError):
        cfg = {}
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _model_class(config: Any) -> tuple[Any, Any, bool]:
    """(auto class, config, is a classifier): a composite's vision tower, else the saved architecture."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForImageClassification") for a in archs):
        return transformers.AutoModelForImageClassification, config, True
    vision = getattr(config, "vision_config", None)
    return transformers.AutoModel, vision if vision is not None else config, False


def build(weights: str = "pretrained", seed: int = 0, source: str = "",
          hidden_states: Sequence[int] | int | None = None, input_size: tuple[int, int] | None = None,
          **_: Any) -> HfStagedModel:
    """``hf:<source>`` staged at ``emb`` and ``hidden_states`` (see the module docstring).

    ``source`` is a hub id or a ``save_pretrained`` folder (the registry passes the text after ``hf:``).
    """
    from transformers import AutoConfig

    if not source:
        raise ModinvError("hf: needs a Hugging Face model id or a save_pretrained folder, e.g. hf:google/vit-base-patch16-224")
    if source.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(source)):
        raise ModinvError(f"hf:{source}: the folder {source!r} does not exist (a hub id has the form owner/name)")
    config = _fetch(source, lambda: AutoConfig.from_pretrained(source), "config")
    auto, config, classifier = _model_class(config)
    if weights == "pretrained":
        net = _fetch(source, lambda: auto.from_pretrained(source, config=config, dtype=torch.float32), "model")
    else:
        state = load_state_file(weights) if is_path(weights) else None
        with seeded(seed):
            net = auto.from_config(config)
        if state is not None:
            load_into(net, state, str(weights))
    size = input_size or getattr(config, "image_size", None)
    if size is None:
        raise ModinvError(f"the config of {source!r} has no image_size; pass input_size=(H, W)")
    size = (size, size) if isinstance(size, int) else tuple(size)
    labels = getattr(config, "id2label", None) or {}
    names = tuple(str(labels[i]) for i in range(len(labels))) if classifier and labels else None
    mean, std = _normalisation(source)
    model = HfStagedModel(net.float().eval(), hidden_states, size, mean, std, f"hf:{source}", names)
    return model.freeze()


register_family(Family(name="hf:", builder=build,
                       summary="any Hugging Face transformers vision model (hub id or folder), at its hidden states",
                       weights=("the hub repository or save_pretrained folder named",)))
