"""Helpers shared by the analyses: limited data batches and strict-JSON values."""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from torch import Tensor


def limited_batches(source, batch_size: int, limit: int | None) -> Iterator[dict[str, Any]]:
    """The batches of ``source`` in order (see :func:`modinv.data.make_loader`), at most ``limit``
    images in all: the last batch is cut short (its tensors and lists), empty batches are dropped."""
    from modinv.data import make_loader

    seen = 0
    for batch in make_loader(source, batch_size=batch_size, shuffle=False):
        n = batch["image"].shape[0]
        if limit is not None:
            n = min(n, max(limit - seen, 0))
        if n:
            seen += n
            yield {k: (v[:n] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()}
        if limit is not None and seen >= limit:
            return


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
