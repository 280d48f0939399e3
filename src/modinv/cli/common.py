"""Arguments and loaders shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from modinv.errors import ModinvError
from modinv.models.base import StagedModel
from modinv.models.registry import load_model
from modinv.runtime import AMP_CHOICES, resolve_device


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="detr-r50, vit-b16, mobilenet-v2, timm:<name>, ...")
    parser.add_argument("--weights", default="pretrained", help="pretrained | random | PATH (default: pretrained)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and of training (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="override the model's input size (H W)"
    )


def add_amp_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default="auto", help="bf16 autocast: auto (CUDA / bf16-capable CPUs), bf16, off"
    )


def model_from_args(args: argparse.Namespace, device=None) -> StagedModel:
    """The model the arguments name, on ``device`` (default: the one --device resolves to)."""
    options = {"input_size": tuple(args.input_size)} if getattr(args, "input_size", None) else {}
    device = device if device is not None else resolve_device(args.device)
    return load_model(args.model, weights=args.weights, seed=args.seed, device=device, **options)


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and make sure files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModinvError(f"cannot create output folder {str(path)!r} ({exc.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ModinvError(f"output folder {str(path)!r} is not writable")
    return path


def writable_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check before any work is done that the file ``path`` can be written (its folder is created);
    ``suffixes``: the accepted file name endings (lower case, with the dot)."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ModinvError(
            f"cannot write {str(path)!r}: the file name must end in {', '.join(suffixes)}"
        )
    writable_dir(path.parent if str(path.parent) else ".")
    if path.is_dir():
        raise ModinvError(f"output file {str(path)!r} is an existing folder; give a file name inside it")
    if path.exists() and not os.access(path, os.W_OK):
        raise ModinvError(f"output file {str(path)!r} exists and is not writable")
    return path


def parse_assignments(items: list[str] | None, kind: type = str, what: str = "value") -> dict:
    """``["bb=local", "pred=oh"]`` -> ``{"bb": "local", "pred": "oh"}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ModinvError(f"expected STAGE={what.upper()}, got {item!r}")
        try:
            out[key] = kind(value)
        except ValueError:
            raise ModinvError(f"bad {what} in {item!r}") from None
    return out


def loop_settings(args: argparse.Namespace) -> dict:
    """The :class:`~modinv.training.modular.TrainConfig` settings shared by ``train`` and ``finetune``."""
    settings = dict(
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch,
        seed=args.seed,
        lr=parse_assignments(args.lr, kind=float, what="learning rate"),
        val_every=args.val_every,
        val_batches=args.val_batches,
        checkpoint_every=args.checkpoint_every,
        amp=args.amp,
        num_workers=args.num_workers,
    )
    for name in ("log_every", "compile"):  # flags only some commands have
        if hasattr(args, name):
            settings[name] = getattr(args, name)
    if hasattr(args, "no_channels_last"):
        settings["channels_last"] = not args.no_channels_last
    return settings
