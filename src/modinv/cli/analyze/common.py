"""What the ``modinv analyze`` commands share: opening the model, chains and data the common
options name, reading ``--compare`` files, and writing a result's JSON and figure."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modinv.cli.common import caption_parts, model_for_chains, writable_dir
from modinv.data import open_source
from modinv.errors import ModinvError
from modinv.fileio import finite_or_null, read_json, write_json
from modinv.inverse.chain import InverseChain
from modinv.models.base import StagedModel


def model_and_source(args: argparse.Namespace) -> tuple[StagedModel, Any]:
    """The model the ``--inverse`` chains were made for (``--model`` etc. may confirm it) and the
    image source of ``--data`` at its input size."""
    model = model_for_chains(args)
    _caption(caption_parts(model, data=args.data, seed=args.seed))
    return model, open_source(args.data, size=tuple(model.input_size))


def load_chains(args: argparse.Namespace, model: StagedModel) -> list[InverseChain]:
    """Every ``--inverse`` chain, on ``model``'s device."""
    chains = [InverseChain.load(path, model, map_location=model.device) for path in args.inverse]
    _caption(caption_parts(model, chains, args.data, args.inverse, args.seed))
    return chains


def _caption(parts: Mapping[str, Any]) -> None:
    """Name in the caption line of the command's figures what they were computed with."""
    from modinv.figures import add_caption_parts

    add_caption_parts(**parts)


def single_chain_inputs(args: argparse.Namespace, analysis: str) -> tuple[Path, StagedModel, InverseChain, Any]:
    """``(out_dir, model, chain, source)`` for an analysis that takes exactly one inverse chain."""
    out = writable_dir(args.out)
    if len(args.inverse) != 1:
        raise ModinvError(f"the {analysis} analysis takes one inverse chain, got {len(args.inverse)}")
    model, source = model_and_source(args)
    return out, model, load_chains(args, model)[0], source


def read_compare_file(path: str | Path) -> Any:
    """The JSON of a ``--compare`` file, or one clear sentence saying why it cannot be read."""
    return read_json(path, "--compare file")


def run_record(args: argparse.Namespace) -> dict[str, Any]:
    """What every analysis JSON records about its command line: ``data`` and ``inverse`` (list)."""
    return {"data": args.data, "inverse": [str(p) for p in args.inverse]}


def write_result(
    out: str | Path,
    name: str,
    result: Any,
    plot: Callable[..., Path] | None = None,
    extra: Mapping[str, Any] | None = None,
    **plot_options: Any,
) -> dict[str, Any]:
    """Write ``<out>/<name>.png`` (``plot(result, path, **plot_options)``, when given) and
    ``<out>/<name>.json`` (``result.to_json()`` or the mapping ``result``, plus ``extra`` and
    ``"figure": "<name>.png"``, strict JSON). Returns the JSON payload (NaN as None)."""
    out = Path(out)
    payload = dict(result.to_json() if hasattr(result, "to_json") else result)
    payload.update(extra or {})
    if plot is not None:
        _caption({"n": payload.get("n_images")})
        payload["figure"] = plot(result, out / f"{name}.png", **plot_options).name
    write_json(out / f"{name}.json", payload)
    return finite_or_null(payload)


def wrote(out: str | Path, name: str, figures: bool = True) -> None:
    """Print the closing line naming the files written."""
    out = Path(out)
    print(f"wrote {out / f'{name}.png'} and {out / f'{name}.json'}" if figures else f"wrote {out / f'{name}.json'}")
