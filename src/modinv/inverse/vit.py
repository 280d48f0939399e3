"""ViT-B/16's inverse components (``arch="paper"``): bb⁻¹ (learned, or the analytic pseudo-inverse
of the patch projection) and enc⁻¹.

Stage shapes (224×224 input): bb and enc 197×768 tokens, the class token first
(``context["num_prefix_tokens"] == 1``), then the 14×14 patch grid row by row (``context["grid"]``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse.blocks import GridDecoder, TokenTransformer, build_encoder, deconv, grid_of, init_, output_head
from modinv.inverse.registry import register


# -- bb⁻¹ ------------------------------------------------------------------------------------------

@register("vit.bb")
def build_bb(embed_dim: int = 768, grid: Sequence[int] = (14, 14), num_prefix_tokens: int = 1,
             out_size: Sequence[int] = (224, 224), channels: Sequence[int] = (256, 64, 16),
             out_channels: int = 3) -> nn.Module:
    """Drop the prefix tokens, lay the patches on their grid, ConvTranspose k2 s2 per channel step."""
    widths = [embed_dim, *channels, out_channels]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += deconv(a, b, 2, 2, norm_act=i < len(widths) - 2)
    scale = 2 ** (len(widths) - 1)
    return GridDecoder(nn.Sequential(*layers), output_head("sigmoid"), grid, num_prefix_tokens, out_size, scale)


def pseudo_inverse(a: Tensor) -> tuple[Tensor, Tensor]:
    """Moore-Penrose pseudo-inverse of a float64 matrix and its singular values (descending), via
    the eigen-decomposition of the smaller Gram matrix (torch's CPU SVD takes ~15 s for 768×768
    here). Singular values below ``sqrt(n·eps)`` of the largest (condition > ~10⁷) count as zero."""
    if a.shape[0] < a.shape[1]:
        pinv, s = pseudo_inverse(a.T)
        return pinv.T, s
    w, v = torch.linalg.eigh(a.T @ a)
    w, v = w.flip(0).clamp_min(0), v.flip(1)
    keep = w > w.max() * max(a.shape) * torch.finfo(a.dtype).eps
    vk = v[:, keep]
    return (vk / w[keep]) @ vk.T @ a.T, w.sqrt()


class AnalyticPatchInverse(nn.Module):
    """The pseudo-inverse of the (affine) patch embedding, with no trainable parameters.

    The forward ``bb`` maps each patch p (3·P·P pixel values in [0, 1]) to ``A p + c_t``, where A
    folds the input normalisation into the patch projection and ``c_t`` holds the projection's
    bias, the normalisation offset and token t's position embedding. :meth:`initialise_from_model`
    measures A and c on the model itself (A as the gradient of the patch tokens with respect to the
    image, c on a blank image), checks that the stage is affine, and stores ``pinv(A)`` and c as
    buffers: the component is self-contained afterwards (no reference to the model).
    The image is ``pinv(A) (x_t - c_t)`` per patch, clamped to [0, 1]. A is ill-conditioned for
    ViT-B/16 (see :meth:`condition_number`), which is why the paper trains bb⁻¹ instead.
    """

    def __init__(self, embed_dim: int, grid: Sequence[int], num_prefix_tokens: int, patch: Sequence[int],
                 in_chans: int = 3):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch = (int(patch[0]), int(patch[1]))
        self.in_chans = in_chans
        self.num_prefix_tokens = num_prefix_tokens
        patch_dim = in_chans * self.patch[0] * self.patch[1]
        self.register_buffer("pinv", torch.zeros(patch_dim, embed_dim))
        self.register_buffer("offset", torch.zeros(self.grid[0] * self.grid[1], embed_dim))
        self.register_buffer("singular_values", torch.zeros(min(patch_dim, embed_dim)))

    def initialise_from_model(self, model: Any) -> None:
        """Measure the patch embedding of ``model`` (its first stage) and store its pseudo-inverse.

        A's rows are gradients of the patch tokens with respect to the image (exact: one product of
        a weight and the normalisation per entry), falling back to finite differences of probe
        images when the stage does not propagate gradients; the offsets come from a blank image.
        """
        stage = model.stages[0]
        h, w = model.input_size
        ph, pw = self.patch
        gh, gw = self.grid
        if (gh * ph, gw * pw) != (h, w):
            raise ModinvError(f"a {gh}×{gw} grid of {ph}×{pw} patches does not tile {h}×{w} images")
        n, patch_dim = gh * gw, self.pinv.shape[0]
        device = model.device

        def embed(images: Tensor) -> Tensor:
            return model.trace(images.to(device), end=stage)[stage][:, self.num_prefix_tokens :]

        with torch.no_grad():
            base = embed(torch.zeros(1, 3, h, w))[0].double().cpu()  # n×D: the offsets c_t
        a = self._rows_by_gradient(embed, n, base.shape[-1])
        if a is None:
            a = self._columns_by_probes(embed, n, patch_dim, base)
        # The stage must be affine per patch, or this is no inverse: check on a random image.
        rng = torch.Generator().manual_seed(0)
        test = torch.rand(1, n, patch_dim, generator=rng)
        predicted = test.double() @ a.T + base
        with torch.no_grad():
            actual = embed(self._unpatchify(test)).double().cpu()
        err = (predicted - actual).abs().max().item() / max(actual.abs().max().item(), 1e-12)
        if err > 1e-4:
            raise ModinvError(
                f"stage {stage!r} of {getattr(model, 'name', 'this model')!r} is not an affine patch "
                f"projection (relative error {err:.1e}); the analytic bb⁻¹ does not apply"
            )
        pinv, singular_values = pseudo_inverse(a)
        self.pinv.copy_(pinv.float())
        self.offset.copy_(base.float())
        self.singular_values.copy_(singular_values[: self.singular_values.numel()].float())

    def _rows_by_gradient(self, embed, n: int, dim: int) -> Tensor | None:
        """A (D×patch_dim) from one backward pass: probe image m holds row m·n + t in patch t."""
        h, w = self.grid[0] * self.patch[0], self.grid[1] * self.patch[1]
        probes = math.ceil(dim / n)
        with torch.enable_grad():
            images = torch.zeros(probes, 3, h, w, requires_grad=True)
            tokens = embed(images)
            if not tokens.requires_grad:
                return None
            rows = torch.arange(probes * n).reshape(probes, n)
            valid = rows < dim
            m, t = valid.nonzero(as_tuple=True)
            (grad,) = torch.autograd.grad(tokens[m, t, rows[valid]].sum(), images)
        patches = self._patchify(grad).double()  # probes×n×patch_dim
        a = torch.empty(dim, patches.shape[-1], dtype=torch.float64)
        a[rows[valid]] = patches[m, t]
        return a

    @torch.no_grad()
    def _columns_by_probes(self, embed, n: int, patch_dim: int, base: Tensor) -> Tensor:
        """A (D×patch_dim) by finite differences: probe image m sets pixel m·n + t of patch t to 1."""
        probes = math.ceil(patch_dim / n)
        images = torch.zeros(probes, n, patch_dim)
        cols = torch.arange(probes * n).reshape(probes, n)
        valid = cols < patch_dim
        m, t = valid.nonzero(as_tuple=True)
        images[m, t, cols[valid]] = 1.0
        response = embed(self._unpatchify(images)).double().cpu() - base
        a = torch.empty(patch_dim, response.shape[-1], dtype=torch.float64)
        a[cols[valid]] = response[m, t]
        return a.T

    def condition_number(self) -> float:
        """Ratio of the largest to the smallest singular value of the patch projection."""
        s = self.singular_values
        return float(s.max() / s.min()) if float(s.min()) > 0 else float("inf")

    def _patchify(self, images: Tensor) -> Tensor:
        """B×C×H×W image -> B×n×(C·P·P) patches (row-major grid); the inverse of :meth:`_unpatchify`."""
        b = images.shape[0]
        (gh, gw), (ph, pw) = self.grid, self.patch
        x = images.reshape(b, self.in_chans, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, gh * gw, self.in_chans * ph * pw)

    def _unpatchify(self, patches: Tensor) -> Tensor:
        """B×n×(C·P·P) patches (row-major grid) -> B×C×H×W image."""
        b = patches.shape[0]
        (gh, gw), (ph, pw) = self.grid, self.patch
        x = patches.reshape(b, gh, gw, self.in_chans, ph, pw)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(b, self.in_chans, gh * ph, gw * pw)

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        grid = grid_of(context or {}, self.grid)
        if grid != self.grid:
            raise ModinvError(f"the analytic bb⁻¹ was measured on a {self.grid} grid, got {grid}")
        with torch.autocast(x.device.type, enabled=False):  # an ill-conditioned solve: keep float32
            tokens = x[:, self.num_prefix_tokens :].float() - self.offset
            patches = tokens @ self.pinv.T
        return self._unpatchify(patches).clamp(0.0, 1.0)


@register("vit.bb_analytic")
def build_bb_analytic(embed_dim: int = 768, grid: Sequence[int] = (14, 14), num_prefix_tokens: int = 1,
                      patch: Sequence[int] = (16, 16), in_chans: int = 3) -> nn.Module:
    return AnalyticPatchInverse(embed_dim, grid, num_prefix_tokens, patch, in_chans)


# -- enc⁻¹ -----------------------------------------------------------------------------------------

# Chains saved before these arguments existed had q/k/v biases and timm's initialisation.
@register("vit.enc", legacy={"qkv_bias": True, "init": "timm"})
def build_enc(embed_dim: int = 768, nhead: int = 12, mlp_ratio: float = 4.0, depth: int = 12,
              dropout: float = 0.0, qkv_bias: bool = False, init: str = "torch") -> nn.Module:
    """Pre-norm transformer blocks (no position embedding, no final norm), 197 -> 197 tokens.

    As the authors' ``InverseViTEncoder`` (timm ``Block`` layers with ``qkv_bias=False``, never
    re-initialised): 85,026,816 parameters at ViT-B's sizes."""
    encoder = build_encoder(depth, embed_dim, nhead, int(embed_dim * mlp_ratio), dropout, "gelu", norm_first=True,
                            qkv_bias=qkv_bias)
    return TokenTransformer(init_(encoder, init))


# -- the paper's set ---------------------------------------------------------------------------------

BB_VARIANTS = ("standard", "analytic")


def paper_specs(shapes: dict[str, tuple[int, ...]], context: dict[str, Any], variants: dict[str, str],
                stages: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config": ..., "variant": ...}}`` of ViT's paper components for these stage shapes."""
    expected = ("img", "bb", "enc")
    if tuple(shapes) != expected:
        raise ModinvError(f"arch='paper' for ViT expects stages {expected[1:]}, got {tuple(shapes)[1:]}")
    _, h, w = shapes["img"]
    n, d = shapes["bb"]
    prefix = int(context.get("num_prefix_tokens", 1))
    grid = tuple(context.get("grid") or (h // 16, w // 16))
    if grid[0] * grid[1] + prefix != n:
        raise ModinvError(f"ViT's bb has {n} tokens, not {prefix} prefix token(s) + a {grid[0]}×{grid[1]} grid")
    patch = (h // grid[0], w // grid[1])
    bb = variants.get("bb", "standard")
    if bb == "local":
        raise ModinvError("ViT's bb⁻¹ is local by construction (each patch token paints its own patch), so it has "
                          "no separate local variant; choose the bb variant standard or analytic")
    if bb not in BB_VARIANTS:
        raise ModinvError(f"ViT's bb⁻¹ variants are {', '.join(BB_VARIANTS)}; got {bb!r}")
    if "pred" in variants:
        raise ModinvError("ViT has no pred stage (the paper leaves its head out); drop the 'pred' variant")
    if bb == "standard":
        steps = math.log2(patch[0])
        if patch[0] != patch[1] or steps != int(steps) or steps < 1:
            raise ModinvError(f"the paper's ViT bb⁻¹ needs square power-of-two patches, got {patch}")
        channels = [256, 64, 16, 8, 8, 8][: int(steps) - 1]
        bb_config = {"kind": "vit.bb", "embed_dim": d, "grid": list(grid), "num_prefix_tokens": prefix,
                     "out_size": [h, w], "channels": channels}
    else:
        bb_config = {"kind": "vit.bb_analytic", "embed_dim": d, "grid": list(grid), "num_prefix_tokens": prefix,
                     "patch": list(patch)}
    return {
        "bb": {"config": bb_config, "variant": bb},
        "enc": {"config": {"kind": "vit.enc", "embed_dim": d, "nhead": max(1, d // 64)}, "variant": "standard"},
    }
