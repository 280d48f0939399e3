"""ViT-B/16 (timm ``vit_base_patch16_224``) and DeiT-B/16 (timm ``deit3_base_patch16_224``, DeiT
III) as staged models, and ViT-B/16's no-self-attention variant: one adapter, three names
(:data:`TIMM_NAMES`).

Stages (paper Section 3.3):

- ``bb``: patch embedding + class token + position embedding (then timm's ``patch_drop`` and
  ``norm_pre``, both identities for these models): B×197×768 at 224×224. DeiT III adds the
  position embedding to the patch tokens only, before the class token is prepended (timm's
  ``no_embed_class``); ViT adds it to every token.
- ``enc``: output of the 12 transformer blocks *before* the final norm: B×197×768.

Images enter in [0, 1]; the adapter normalises them with the mean and std of the timm model's own
pretrained config (mean = std = 0.5 for the ViT, not ImageNet's statistics; ImageNet's for DeiT
III). The model's task output is the classifier's logits, computed from ``enc`` with timm's final
norm and head, as timm's own forward.

``vit-b16-noselfattn`` (paper Section 4.5) is the same network in which every patch token attends
only to itself while the class token attends to all tokens. The restriction is a boolean attention
mask passed to timm's own blocks, so the variant shares the standard model's weights, state-dict
keys and code, and stays trainable (fine-tuning with cross-entropy).

Context of a trace: ``grid`` (rows, columns of patches), ``num_prefix_tokens`` (the class token)
and ``pos_embed`` 1×N×D, the position embedding each ``bb`` token received (row i for token i; zeros
for tokens that got none). Metadata (``model.meta``): task ``"classification"`` with the ImageNet-1k
class names, the timm config's mean/std, inverse family ``"vit"`` with the paper's Adam rates (the
same for ViT and DeiT), both stages ``"tokens"``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.models.base import StagedModel, Trace
from modinv.models.family import Family, register_family
from modinv.models.roles import TokenGrid
from modinv.models.recipes import DEIT_PAPER, VIT_PAPER
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.timm_loader import check_input_size, create_timm_model, family_meta

TIMM_NAME = "vit_base_patch16_224"
DEIT_TIMM_NAME = "deit3_base_patch16_224"
NAME = "vit-b16"
NAME_NO_SELF_ATTENTION = "vit-b16-noselfattn"
DEIT_NAME = "deit-b16"
TIMM_NAMES = {NAME: TIMM_NAME, NAME_NO_SELF_ATTENTION: TIMM_NAME, DEIT_NAME: DEIT_TIMM_NAME}
LABELS = {NAME: "ViT-B/16", NAME_NO_SELF_ATTENTION: "ViT-B/16", DEIT_NAME: "DeiT-B/16"}  # for messages
PATCH = 16
LEARNING_RATES = {"bb": 1e-3, "enc": 1e-4}  # the paper code's Adam rates (ViT and DeiT)

__all__ = [
    "DEIT_NAME",
    "DEIT_TIMM_NAME",
    "NAME",
    "NAME_NO_SELF_ATTENTION",
    "TIMM_NAME",
    "TIMM_NAMES",
    "VitStagedModel",
    "build",
    "build_deit",
    "build_no_self_attention",
    "no_self_attention_mask",
    "token_position_embedding",
]


def no_self_attention_mask(num_tokens: int, num_prefix_tokens: int = 1, device: Any = None) -> Tensor:
    """Boolean N×N mask (True = may attend): prefix (class) tokens attend to every token, each
    patch token only to itself. Row i is the query, column j the key, as in
    ``F.scaled_dot_product_attention``."""
    mask = torch.eye(num_tokens, dtype=torch.bool, device=device)
    mask[:num_prefix_tokens, :] = True
    return mask


def token_position_embedding(vit: nn.Module) -> Tensor:
    """1×N×D: the position embedding each token of a timm VisionTransformer's embedding output
    received, prefix tokens first, as ``_pos_embed`` adds it (zeros for the prefix tokens of models
    that embed only patch tokens, such as DeiT III, and for every token of a model without one)."""
    n_prefix, d = int(vit.num_prefix_tokens), int(vit.embed_dim)
    n_patches = int(vit.patch_embed.num_patches)
    pos = getattr(vit, "pos_embed", None)
    if pos is None:
        return torch.zeros(1, n_prefix + n_patches, d)
    pos = pos.detach()
    if getattr(vit, "no_embed_class", False) and n_prefix:
        pos = torch.cat([pos.new_zeros(1, n_prefix, d), pos], dim=1)
    return pos


class VitStagedModel(StagedModel):
    """A timm VisionTransformer (ViT, DeiT III) exposed through the stages ``("bb", "enc")``.

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
        family = FAMILIES.get(name)
        if family is None:
            raise ModinvError(f"a ViT adapter is one of {', '.join(FAMILIES)}, got {name!r}")
        # The normalisation of the timm config, as the family declares it; not weights: kept out of the state dict.
        self.set_normalization(family.mean, family.std)
        self.meta = family_meta(
            family, vit,
            learning_rates=dict(LEARNING_RATES),
            num_prefix_tokens=int(vit.num_prefix_tokens),
            stage_layouts={stage: "tokens" for stage in self.stages},
            finetune_stage="enc",
        )

    # -- StagedModel -----------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns), e.g. (14, 14) at 224×224."""
        return tuple(int(g) for g in self.vit.patch_embed.grid_size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def prepare(self, images: Tensor) -> dict[str, Any]:
        """Patch grid, number of prefix tokens and the position embedding of every ``bb`` token."""
        pos = token_position_embedding(self.vit).to(device=images.device)
        return {"grid": self.grid, "num_prefix_tokens": self.num_prefix_tokens, "pos_embed": pos}

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

    # -- roles -------------------------------------------------------------------------------------
    def token_stages(self) -> dict[str, TokenGrid]:
        """``bb`` (its learned position embedding is part of the tokens) and ``enc`` (no explicit
        position any more, paper Sec. 4.5), both on the patch grid after the class token."""
        prefix = self.num_prefix_tokens
        return {"bb": TokenGrid(self.grid, prefix, position="embedded"), "enc": TokenGrid(self.grid, prefix)}

    def token_position(self, trace: Trace, stage: str) -> Tensor | None:
        if stage != "bb":
            return None
        return trace.context["pos_embed"][:, self.num_prefix_tokens:]

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        vit = self.vit
        tokens = nn.ParameterList([p for p in (vit.cls_token, vit.reg_token, vit.pos_embed) if p is not None])
        return {
            "bb": [vit.patch_embed, tokens, vit.pos_drop, vit.patch_drop, vit.norm_pre],
            "enc": [vit.blocks],
        }

    def layer_stacks(self) -> tuple[str, ...]:
        return ("enc",)

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
def _build(name: str, weights: str | os.PathLike, seed: int, input_size: Any,
           self_attention: bool = True) -> VitStagedModel:
    """The adapter ``name`` of :data:`TIMM_NAMES` from any weight source; a file may also be a
    VitStagedModel state dict (``vit.`` keys), and its position embeddings are resampled to
    ``input_size`` (None: the family's, 224×224) by timm."""
    size = check_input_size(input_size or FAMILIES[name].input_size, PATCH, LABELS[name],
                            f"made of whole {PATCH}-pixel patches")
    vit = create_timm_model(TIMM_NAMES[name], weights, seed, adapter_prefix="vit.", img_size=size)
    return VitStagedModel(vit, name=name, self_attention=self_attention).freeze()


def build(weights: str = "pretrained", seed: int = 0, input_size: Any = None, **_: Any) -> VitStagedModel:
    """ViT-B/16 (timm ``vit_base_patch16_224``) with stages ``bb`` and ``enc``, frozen in eval mode.

    ``weights``: ``"pretrained"`` (timm's default weights for the model, via the Hugging Face hub),
    ``"random"`` (timm's initialisation under ``seed``) or the path of a local .safetensors/.pth
    state dict (timm's keys; position embeddings are resampled to ``input_size`` when needed).
    """
    return _build(NAME, weights, seed, input_size)


def build_deit(weights: str = "pretrained", seed: int = 0, input_size: Any = None, **_: Any) -> VitStagedModel:
    """DeiT-B/16 (timm ``deit3_base_patch16_224``, DeiT III) with stages ``bb`` and ``enc``, frozen.

    The same adapter and weight sources as :func:`build`; DeiT III adds its position embedding to
    the patch tokens only (``trace.context["pos_embed"]`` is zero for the class token) and expects
    ImageNet normalisation (from its pretrained config).
    """
    return _build(DEIT_NAME, weights, seed, input_size)


def build_no_self_attention(
    weights: str = "pretrained", seed: int = 0, input_size: Any = None, **_: Any
) -> VitStagedModel:
    """ViT-B/16 whose patch tokens attend only to themselves; the class token attends to all tokens.

    Same architecture, parameters and weight sources as :func:`build` (pretrained ViT weights are
    the starting point for fine-tuning); returned frozen, unfreeze it to fine-tune.
    """
    return _build(NAME_NO_SELF_ATTENTION, weights, seed, input_size, self_attention=False)


_VIT_SHAPES = {"bb": (197, 768), "enc": (197, 768)}  # 1 class token + 14×14 patches of 768 at 224×224
_DECLARED = dict(task="classification", stages=VitStagedModel.stages, stage_shapes=_VIT_SHAPES, input_size=(224, 224),
                 inverse_family="vit")
_VIT = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), weights=(f"timm {TIMM_NAME}",), recipes={"paper": VIT_PAPER})
FAMILIES = {family.name: register_family(family) for family in (
    Family(name=NAME, builder=build, summary=f"ViT-B/16 (timm {TIMM_NAME}), ImageNet classifier", **_VIT, **_DECLARED),
    Family(name=NAME_NO_SELF_ATTENTION, builder=build_no_self_attention,
           summary="ViT-B/16 whose patch tokens attend only to themselves (for fine-tuning)", **_VIT, **_DECLARED),
    Family(name=DEIT_NAME, builder=build_deit, summary=f"DeiT III B/16 (timm {DEIT_TIMM_NAME}), ImageNet classifier",
           mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=(f"timm {DEIT_TIMM_NAME}",), recipes={"paper": DEIT_PAPER},
           **_DECLARED),
)}
