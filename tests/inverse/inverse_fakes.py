"""Small fake staged models and helpers for the tests of modinv.inverse (imported by name; the
fixtures that build them are in this folder's conftest.py).

Fast by construction: a model with DETR-R50's stage shapes at a 64×96 input, one with ViT-B/16's at
32×48 (both declaring the inverse family of the model they imitate), a tiny conv net and a tiny
token net instead of the real adapters.
"""

from __future__ import annotations

import torch
from torch import nn

from modinv.inverse.blocks import sine_position_embedding
from modinv.models.base import ModelMeta, StagedModel


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class FakeDetr(StagedModel):
    """DETR-R50's stage shapes and context at a small input: bb/enc (H/32·W/32)×256, dec Q×256,
    pred Q×96; context pos (sine), grid, mask. Declares DETR's inverse family."""

    name = "fake-detr"
    stages = ("bb", "enc", "dec", "pred")
    meta = ModelMeta(task="detection", inverse_family="detr")

    def __init__(self, input_size=(64, 96), queries=100):
        super().__init__()
        self.input_size = tuple(input_size)
        self.proj = nn.Conv2d(3, 256, 32, 32)
        self.enc = nn.Linear(256, 256)
        self.query = nn.Parameter(torch.randn(queries, 256))
        self.head = nn.Linear(256, 96)

    def prepare(self, images):
        grid = (images.shape[-2] // 32, images.shape[-1] // 32)
        pos = sine_position_embedding(grid, 256, device=images.device).expand(images.shape[0], -1, -1)
        return {"pos": pos, "grid": grid, "mask": torch.ones(images.shape[0], *grid, dtype=torch.bool)}

    def step(self, stage, x, context):
        if stage == "bb":
            return self.proj(x).flatten(2).transpose(1, 2)
        if stage == "enc":
            return torch.tanh(self.enc(x + context["pos"]))
        if stage == "dec":
            return self.query[None] + x.mean(1, keepdim=True)
        return self.head(x)


class FakeVit(StagedModel):
    """ViT-B/16's stage shapes at a small input (2×3 patches): bb = affine patch embedding
    (normalisation mean = std = 0.5, class token, position embedding), enc = one more layer.
    Declares ViT's inverse family."""

    name = "fake-vit"
    stages = ("bb", "enc")
    meta = ModelMeta(task="classification", inverse_family="vit", num_prefix_tokens=1)

    def __init__(self, input_size=(32, 48), dim=768, patch=16, affine=True):
        super().__init__()
        self.input_size = tuple(input_size)
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.grid = (input_size[0] // patch, input_size[1] // patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + self.grid[0] * self.grid[1], dim) * 0.02)
        self.enc = nn.Linear(dim, dim)
        self.affine = affine

    def prepare(self, images):
        return {"grid": self.grid, "num_prefix_tokens": 1}

    def step(self, stage, x, context):
        if stage == "bb":
            x = (x - 0.5) / 0.5
            if not self.affine:
                x = x.square()
            t = self.patch(x).flatten(2).transpose(1, 2)
            return torch.cat((self.cls.expand(x.shape[0], -1, -1), t), 1) + self.pos
        return x + self.enc(x)


class TinyConv(StagedModel):
    """Conv net at an odd input (30×44): s2 8×15×22, s4 16×8×11, tok 88×24 (tokens of s4), vec 24.
    Declares no inverse family."""

    name = "tiny-conv"
    stages = ("s2", "s4", "tok", "vec")

    def __init__(self):
        super().__init__()
        self.input_size = (30, 44)
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.lin = nn.Linear(16, 24)

    def step(self, stage, x, context):
        if stage == "s2":
            return torch.relu(self.c1(x))
        if stage == "s4":
            return torch.relu(self.c2(x))
        if stage == "tok":
            return self.lin(x.flatten(2).transpose(1, 2))
        return x.mean(1)


class TinyTokens(StagedModel):
    """Token net (32×32, 8×8 patches, class token): bb 17×48, enc 17×48, map 16×2×2."""

    name = "tiny-tokens"
    stages = ("bb", "enc", "map")

    def __init__(self):
        super().__init__()
        self.input_size = (32, 32)
        self.patch = nn.Conv2d(3, 48, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 48))
        self.enc = nn.Linear(48, 48)
        self.down = nn.Conv2d(48, 16, 2, 2)

    def prepare(self, images):
        return {"grid": (4, 4), "num_prefix_tokens": 1}

    def step(self, stage, x, context):
        if stage == "bb":
            t = self.patch(x).flatten(2).transpose(1, 2)
            return torch.cat((self.cls.expand(x.shape[0], -1, -1), t), 1)
        if stage == "enc":
            return x + self.enc(x)
        grid = x[:, 1:].transpose(1, 2).reshape(x.shape[0], 48, 4, 4)
        return self.down(grid)


def frozen(model: StagedModel) -> StagedModel:
    """``model`` with seeded weights (seed 0), frozen and in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
    return model.freeze()


def images(model: StagedModel, b: int = 2, seed: int = 0) -> torch.Tensor:
    """``b`` seeded random images at the model's input size."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, *model.input_size, generator=g)


def detr_context(grid, b: int = 2) -> dict:
    """The context DETR's components read: sine position embedding of ``grid`` and the grid."""
    return {"pos": sine_position_embedding(grid, 256).expand(b, -1, -1), "grid": grid}
