"""Building blocks shared by the inverse components of every model family.

Transformer layers (post-norm as in DETR, pre-norm as in ViT) with position embeddings added to
queries and keys, an upsampling ConvTranspose stack, the token-grid reshaping that turns a token
sequence into a feature map, and the DETR sine position embedding. Nothing here knows a model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modinv.errors import ModinvError
from modinv.inverse.conv_transpose import ConvTranspose2d

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ModinvError(f"unknown activation {name!r}; valid: {', '.join(_ACTIVATIONS)}") from None


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


def heads_for(width: int, head_dim: int = 64) -> int:
    """The largest head count not above ``width // head_dim`` (at least 1) that divides ``width``."""
    h = max(1, width // head_dim)
    while width % h:
        h -= 1
    return h


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear (the transformer MLP)."""

    def __init__(self, d_model: int, dim_ff: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.activation = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention + feed-forward; ``pos`` is added to queries and keys (not values).

    ``norm_first=False`` is DETR's post-norm layer, ``norm_first=True`` a ViT-style pre-norm block.
    ``qkv_bias=False`` drops the q/k/v projections' bias (timm's ``qkv_bias=False``), keeping the
    output projection's.
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, qkv_bias: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        if not qkv_bias:  # MultiheadAttention(bias=False) would drop out_proj's bias too
            self.self_attn.register_parameter("in_proj_bias", None)
        self.ffn = FeedForward(d_model, dim_ff, activation, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _attend(self, x: Tensor, pos: Tensor | None) -> Tensor:
        q = k = _with_pos(x, pos)
        return self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        if self.norm_first:
            x = x + self._attend(self.norm1(x), pos)
            return x + self.dropout2(self.ffn(self.norm2(x)))
        x = self.norm1(x + self._attend(x, pos))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Self-attention of the queries, cross-attention to ``memory``, feed-forward (DETR's layer).

    ``query_pos`` is added to the queries' Q and K, ``pos`` to the memory's K.
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.ffn = FeedForward(d_model, dim_ff, activation, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _self(self, t: Tensor, query_pos: Tensor | None) -> Tensor:
        q = k = _with_pos(t, query_pos)
        return self.dropout1(self.self_attn(q, k, t, need_weights=False)[0])

    def _cross(self, t: Tensor, memory: Tensor, query_pos: Tensor | None, pos: Tensor | None) -> Tensor:
        out = self.cross_attn(_with_pos(t, query_pos), _with_pos(memory, pos), memory, need_weights=False)[0]
        return self.dropout2(out)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor | None = None,
                pos: Tensor | None = None) -> Tensor:
        if self.norm_first:
            tgt = tgt + self._self(self.norm1(tgt), query_pos)
            tgt = tgt + self._cross(self.norm2(tgt), memory, query_pos, pos)
            return tgt + self.dropout3(self.ffn(self.norm3(tgt)))
        tgt = self.norm1(tgt + self._self(tgt, query_pos))
        tgt = self.norm2(tgt + self._cross(tgt, memory, query_pos, pos))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt)))


class Encoder(nn.Module):
    """A stack of :class:`EncoderLayer` with an optional final norm."""

    def __init__(self, layers: Sequence[nn.Module], norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return self.norm(x)


class Decoder(nn.Module):
    """A stack of :class:`DecoderLayer` with an optional final norm."""

    def __init__(self, layers: Sequence[nn.Module], norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor | None = None,
                pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, pos)
        return self.norm(tgt)


def build_encoder(depth: int, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0,
                  activation: str = "relu", norm_first: bool = False, final_norm: bool = False,
                  qkv_bias: bool = True) -> Encoder:
    layers = [EncoderLayer(d_model, nhead, dim_ff, dropout, activation, norm_first, qkv_bias) for _ in range(depth)]
    return Encoder(layers, nn.LayerNorm(d_model) if final_norm else None)


def build_decoder(depth: int, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0,
                  activation: str = "relu", norm_first: bool = False, final_norm: bool = True) -> Decoder:
    layers = [DecoderLayer(d_model, nhead, dim_ff, dropout, activation, norm_first) for _ in range(depth)]
    return Decoder(layers, nn.LayerNorm(d_model) if final_norm else None)


def xavier_init_(module: nn.Module) -> nn.Module:
    """DETR's initialisation of its transformer: Xavier-uniform for every matrix."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return module


def timm_init_(module: nn.Module) -> nn.Module:
    """timm's ViT initialisation: normal (std 0.02) matrices, zero biases. (timm truncates at ±2,
    i.e. 100 standard deviations: the same distribution, and ``normal_`` is much faster on CPU.)"""
    for name, p in module.named_parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    return module


INITS = {"torch": lambda m: m, "xavier": xavier_init_, "timm": timm_init_}


def init_(module: nn.Module, name: str) -> nn.Module:
    """Initialise ``module`` by name: ``"torch"`` keeps PyTorch's (and timm's layers') own
    initialisation, as the authors' inverse modules did (they never re-initialised them);
    ``"xavier"`` is DETR's forward transformer's; ``"timm"`` is timm's ViT's."""
    try:
        return INITS[name](module)
    except KeyError:
        raise ModinvError(f"unknown initialisation {name!r}; valid: {', '.join(INITS)}") from None


def mlp(dims: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers ``dims[0] -> dims[1] -> ...`` with the activation between (not after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(_activation(activation))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


# -- convolutional decoders --------------------------------------------------------------------

def deconv(c_in: int, c_out: int, kernel: int, stride: int, norm_act: bool = True) -> list[nn.Module]:
    """ConvTranspose2d that scales the grid by exactly ``stride`` (+ BatchNorm + ReLU); modinv's
    subclass, whose bf16 backward on CPUs is cheaper (:mod:`modinv.inverse.conv_transpose`)."""
    padding = max(0, (kernel - stride + 1) // 2)
    output_padding = stride - kernel + 2 * padding
    layers: list[nn.Module] = [ConvTranspose2d(c_in, c_out, kernel, stride, padding, output_padding)]
    if norm_act:
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers


def conv3x3(c_in: int, c_out: int, norm_act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, 1, 1)]
    if norm_act:
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers


def geometric_widths(c_in: int, c_out: int, steps: int, multiple: int = 8) -> list[int]:
    """``steps`` channel widths going geometrically from ``c_in`` to ``c_out`` (last one ``c_out``)."""
    widths = []
    for i in range(1, steps + 1):
        w = c_in * (c_out / c_in) ** (i / steps)
        widths.append(c_out if i == steps else max(multiple, int(round(w / multiple)) * multiple))
    return widths


_HEADS = {"sigmoid": nn.Sigmoid, "clamp": lambda: _Clamp01(), "none": nn.Identity}


class _Clamp01(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


def output_head(name: str) -> nn.Module:
    try:
        return _HEADS[name]()
    except KeyError:
        raise ModinvError(f"unknown output head {name!r}; valid: {', '.join(_HEADS)}") from None


def grid_of(context: dict[str, Any], default: Sequence[int] | None) -> tuple[int, int]:
    """The token grid (H', W') of this batch: ``context["grid"]``, else the configured default."""
    grid = context.get("grid") if context else None
    if grid is None:
        grid = default
    if grid is None:
        raise ModinvError("this inverse component needs the token grid: pass context['grid'] = (H', W')")
    return int(grid[0]), int(grid[1])


def tokens_to_grid(x: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> Tensor:
    """B×N×D tokens (row-major grid after ``num_prefix_tokens`` prefix tokens) -> B×D×H'×W'."""
    b, n, d = x.shape
    h, w = grid
    if n - num_prefix_tokens != h * w:
        raise ModinvError(
            f"{n} tokens with {num_prefix_tokens} prefix token(s) do not fill a {h}×{w} grid; "
            "pass the matching context['grid']"
        )
    return x[:, num_prefix_tokens:].transpose(1, 2).reshape(b, d, h, w)


def fit_to(x: Tensor, size: Sequence[int], slack: int) -> Tensor:
    """Bring a B×C×h×w map to ``size``: crop the bottom/right when it is larger by less than
    ``slack`` (strided convolutions round sizes up), otherwise resize bilinearly."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2:] == (h, w):
        return x
    dh, dw = x.shape[-2] - h, x.shape[-1] - w
    if 0 <= dh < max(slack, 1) and 0 <= dw < max(slack, 1):
        return x[..., :h, :w]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class GridDecoder(nn.Module):
    """Token sequence or feature map -> feature map or image through a convolutional ``decoder``.

    Tokens (B×N×D) are first laid out on their grid (``context["grid"]``, else ``grid``) after
    dropping ``num_prefix_tokens`` (``context_grid=False``: always ``grid``, for token stages whose
    grid is not the model's ``context["grid"]``); feature maps (B×C×h×w) go in as they are. When the input grid is
    the configured one, the output is fitted to ``out_size``; ``head`` ends it (sigmoid for images).
    """

    def __init__(self, decoder: nn.Module, head: nn.Module, grid: Sequence[int] | None = None,
                 num_prefix_tokens: int = 0, out_size: Sequence[int] | None = None, scale: int = 1,
                 context_grid: bool = True):
        super().__init__()
        self.decoder = decoder
        self.head = head
        self.grid = tuple(grid) if grid is not None else None
        self.num_prefix_tokens = num_prefix_tokens
        self.out_size = tuple(out_size) if out_size is not None else None
        self.scale = scale
        self.context_grid = context_grid

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        context = context or {}
        if x.ndim == 3:
            grid = grid_of(context if self.context_grid else {}, self.grid)
            x = tokens_to_grid(x, grid, self.num_prefix_tokens)
        else:
            grid = tuple(x.shape[-2:])
        y = self.decoder(x)
        if self.out_size is not None and (self.grid is None or grid == self.grid):
            y = fit_to(y, self.out_size, self.scale)
        return self.head(y)


class TokenTransformer(nn.Module):
    """Token sequence -> token sequence of the same length: ``in_proj``, an encoder, ``out_proj``."""

    def __init__(self, encoder: nn.Module, in_proj: nn.Module | None = None, out_proj: nn.Module | None = None):
        super().__init__()
        self.in_proj = in_proj if in_proj is not None else nn.Identity()
        self.encoder = encoder
        self.out_proj = out_proj if out_proj is not None else nn.Identity()

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        return self.out_proj(self.encoder(self.in_proj(x)))


class TokenMLP(nn.Module):
    """A per-token (or per-vector) MLP as a component: ``forward(x, context)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: dict[str, Any] | None = None) -> Tensor:
        return self.net(x)


# -- position embeddings -------------------------------------------------------------------------

def sine_position_embedding(grid: Sequence[int], dim: int = 256, temperature: float = 10000.0,
                            device: torch.device | str | None = None) -> Tensor:
    """DETR's normalised 2-D sine embedding of an unmasked H'×W' grid, as 1×(H'·W')×dim tokens
    (row-major), the y half first — the embedding DETR adds to its encoder's queries and keys."""
    h, w = int(grid[0]), int(grid[1])
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    y = y / (h + eps) * scale
    x = x / (w + eps) * scale
    i = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)

    def embed(coord: Tensor) -> Tensor:
        v = coord[..., None] / dim_t
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2)

    pos = torch.cat((embed(y), embed(x)), dim=-1)  # h×w×dim
    return pos.reshape(1, h * w, dim)
