"""Helpers shared by the analyses: limited data batches and strict-JSON values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch import Tensor

from modinv.errors import ModinvError


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


def read_compare_file(path: str | Path) -> Any:
    """The JSON of a ``--compare`` file, or one clear sentence saying why it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModinvError(f"--compare file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModinvError(f"cannot read --compare file {str(path)!r} ({type(exc).__name__}: {exc})") from None


def single_chain_inputs(args, analysis: str):
    """``(out_dir, model, chain, source)`` for an analysis that takes exactly one inverse chain."""
    from modinv.cli.common import model_from_args, writable_dir
    from modinv.data import open_source
    from modinv.inverse.chain import InverseChain

    out = writable_dir(args.out)
    if len(args.inverse) != 1:
        raise ModinvError(f"the {analysis} analysis takes one inverse chain, got {len(args.inverse)}")
    model = model_from_args(args)
    chain = InverseChain.load(args.inverse[0], model, map_location=model.device)
    return out, model, chain, open_source(args.data, size=tuple(model.input_size))
