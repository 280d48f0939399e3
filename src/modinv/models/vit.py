"""ViT-B/16 (timm ``vit_base_patch16_224``) as a staged model, and its no-self-attention variant.

Stages (paper Section 3.3):

- ``bb``: patch embedding + class token + position embedding (then timm's ``patch_drop`` and
  ``norm_pre``, both identities for this model): B×197×768 at 224×224.
- ``enc``: output of the 12 transformer blocks *before* the final norm: B×197×768.

Images enter in [0, 1]; the adapter normalises them with the mean and std of the timm model's own
pretrained config (mean = std = 0.5 for this model, not ImageNet's statistics). The model's task
output is the classifier's logits, computed from ``enc`` with timm's final norm and head.

``vit-b16-noselfattn`` (paper Section 4.5) is the same network in which every patch token attends
only to itself while the class token attends to all tokens. The restriction is a boolean attention
mask passed to timm's own blocks, so the variant shares the standard model's weights, state-dict
keys and code, and stays trainable (fine-tuning with cross-entropy).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError, brief
from modinv.models.base import StagedModel, Trace
from modinv.models.weights import from_hub, is_path, load_into, load_state_file, seeded

TIMM_NAME = "vit_base_patch16_224"
NAME = "vit-b16"
NAME_NO_SELF_ATTENTION = "vit-b16-noselfattn"

__all__ = [
    "NAME",
    "NAME_NO_SELF_ATTENTION",
    "TIMM_NAME",
    "VitStagedModel",
    "build",
    "build_no_self_attention",
    "no_self_attention_mask",
]


def no_self_attention_mask(num_tokens: int, num_prefix_tokens: int = 1, device: Any = None) -> Tensor:
    """Boolean N×N mask (True = may attend): prefix (class) tokens attend to every token, each
    patch token only to itself. Row i is the query, column j the key, as in
    ``F.scaled_dot_product_attention``."""
    mask = torch.eye(num_tokens, dtype=torch.bool, device=device)
    mask[:num_prefix_tokens, :] = True
    return mask


class VitStagedModel(StagedModel):
    """A timm VisionTransformer exposed through the stages ``("bb", "enc")``.

    ``vit`` is the wrapped timm model; ``mean`` and ``std`` (buffers, 1×3×1×1) the input
    normalisation from its pretrained config. With ``self_attention=False`` patch tokens attend only
    to themselves (the class token still attends to all tokens).
    """

    stages = ("bb", "enc")

    def __init__(self, vit: nn.Module, name: str = NAME, self_attention: bool = True) -> None:
        super().__init__()
        self.vit = vit
        self.name = name
        self.self_attention = self_attention
        self.input_size = tuple(int(s) for s in vit.patch_embed.img_size)
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        if "mean" not in cfg or "std" not in cfg:
            raise ModinvError(f"timm model {TIMM_NAME!r} carries no normalisation in its pretrained config")
        # Derived from the config, not weights: kept out of the state dict.
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # -- StagedModel -----------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns), e.g. (14, 14) at 224×224."""
        return tuple(int(g) for g in self.vit.patch_embed.grid_size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def prepare(self, images: Tensor) -> dict[str, Any]:
        return {"grid": self.grid, "num_prefix_tokens": self.num_prefix_tokens}

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] images -> the input the timm model expects."""
        return (images - self.mean) / self.std

    def attention_mask(self, num_tokens: int, device: Any = None) -> Tensor | None:
        """The mask passed to every block: None for standard self-attention."""
        if self.self_attention:
            return None
        return no_self_attention_mask(num_tokens, self.num_prefix_tokens, device=device)

    def step(self, stage: str, x: Tensor, context: dict[str, Any]) -> Tensor:
        if stage == "bb":
            return self._embed(x)
        if stage == "enc":
            return self._encode(x)[-1]
        raise ModinvError(f"unknown stage {stage!r} for model {self.name!r}; valid stages: {', '.join(self.stages)}")

    def output(self, trace: Trace) -> Tensor:
        """Class logits (B×1000) from ``trace["enc"]``: timm's final norm, then its head."""
        return self.vit.forward_head(self.vit.norm(trace["enc"]))

    def logits(self, images: Tensor) -> Tensor:
        """Class logits of [0, 1] images (convenience for evaluation and fine-tuning)."""
        return self.output(self.trace(images))

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        vit = self.vit
        tokens = nn.ParameterList([p for p in (vit.cls_token, vit.reg_token, vit.pos_embed) if p is not None])
        return {
            "bb": [vit.patch_embed, tokens, vit.pos_drop, vit.patch_drop, vit.norm_pre],
            "enc": [vit.blocks],
        }

    def layers(self, images: Tensor) -> dict[str, list[Tensor]]:
        """``{"enc": [bb, block 1 output, ..., block 12 output]}`` (13 tensors, last = enc)."""
        self.check_images(images)
        bb = self._embed(images.to(self.device))
        return {"enc": self._encode(bb, keep_all=True)}

    # -- internals ---------------------------------------------------------------------------------
    def _embed(self, images: Tensor) -> Tensor:
        self.check_images(images)
        vit = self.vit
        x = vit.patch_embed(self.normalize(images))
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def _encode(self, x: Tensor, keep_all: bool = False) -> list[Tensor]:
        """Run the blocks; the outputs of all of them (with the input first) or of the last."""
        mask = self.attention_mask(x.shape[1], device=x.device)
        outs = [x]
        for block in self.vit.blocks:
            x = block(x) if mask is None else block(x, attn_mask=mask)
            if keep_all:
                outs.append(x)
        return outs if keep_all else [x]


# -- builders ---------------------------------------------------------------------------------------
def _how_to_supply() -> str:
    try:
        from timm.models import get_pretrained_cfg

        hub_id = get_pretrained_cfg(TIMM_NAME).hf_hub_id
    except Exception:  # pragma: no cover - timm without the config
        hub_id = None
    where = f"model.safetensors of https://huggingface.co/{hub_id}" if hub_id else "the timm weights"
    return (
        f"download {where} where the hub is reachable and pass the local .safetensors (or .pth) file "
        "as weights=PATH (--weights PATH), or use weights='random'"
    )


def _check_input_size(input_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in input_size)
    except (TypeError, ValueError):
        raise ModinvError(f"input_size must be (H, W), got {input_size!r}") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ModinvError(f"ViT-B/16 needs an input size made of whole 16-pixel patches, got {h}×{w}")
    return h, w


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _create_vit(weights: str | os.PathLike, seed: int, input_size: tuple[int, int]) -> nn.Module:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    if not is_path(weights) and str(weights) == "pretrained":
        with seeded(seed):
            return from_hub(
                lambda: timm.create_model(TIMM_NAME, pretrained=True, img_size=input_size),
                f"{TIMM_NAME} (timm)",
                _how_to_supply(),
            )
    state, source = None, None
    if is_path(weights):  # read the file first: a bad path fails before the model is built
        source = os.fspath(weights)
        state = _strip_prefix(load_state_file(source), "vit.")  # also accept a VitStagedModel state dict
    with seeded(seed):
        vit = timm.create_model(TIMM_NAME, pretrained=False, img_size=input_size)
    if state is not None:
        try:
            # timm's own converter: resamples position embeddings to input_size, unwraps foreign layouts.
            state = checkpoint_filter_fn(state, vit)
        except Exception as exc:
            raise ModinvError(
                f"weights in {source!r} do not fit this model ({brief(exc)})"
            ) from None
        load_into(vit, state, source)
    return vit


def build(weights: str = "pretrained", seed: int = 0, input_size=(224, 224), **_: Any) -> VitStagedModel:
    """ViT-B/16 (timm ``vit_base_patch16_224``) with stages ``bb`` and ``enc``, frozen in eval mode.

    ``weights``: ``"pretrained"`` (timm's default weights for the model, via the Hugging Face hub),
    ``"random"`` (timm's initialisation under ``seed``) or the path of a local .safetensors/.pth
    state dict (timm's keys; position embeddings are resampled to ``input_size`` when needed).
    """
    size = _check_input_size(input_size)
    return VitStagedModel(_create_vit(weights, seed, size), name=NAME).freeze()


def build_no_self_attention(
    weights: str = "pretrained", seed: int = 0, input_size=(224, 224), **_: Any
) -> VitStagedModel:
    """ViT-B/16 whose patch tokens attend only to themselves; the class token attends to all tokens.

    Same architecture, parameters and weight sources as :func:`build` (pretrained ViT weights are
    the starting point for fine-tuning); returned frozen, unfreeze it to fine-tune.
    """
    size = _check_input_size(input_size)
    return VitStagedModel(_create_vit(weights, seed, size), name=NAME_NO_SELF_ATTENTION, self_attention=False).freeze()
