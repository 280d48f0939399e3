"""What ``--resume`` reads back from a training run's folder, so that ``modinv train --out RUN
--resume --steps N`` needs nothing else: every setting not given on the command line is the run's
(its ``config.json``; input size and component variants from its saved chain), and a setting
that is given is checked against the run by the training engine as before (only the changeable
ones, such as the length of the run and the learning rates, may differ)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modinv.errors import ModinvError

# option dest -> (its entry in config.json, "train.X" for a field of the TrainConfig; its default
# for a new run). The options of train and finetune default to None so that a resume can tell
# "not given" from "given".
RUN_OPTIONS: dict[str, tuple[str, Any]] = {
    "model": ("model", None), "weights": ("weights", "pretrained"), "seed": ("train.seed", 0),
    "data": ("data", None), "val_data": ("val_data", None), "val_fraction": ("val_fraction", 0.1),
    "batch": ("train.batch_size", None), "recipe": ("recipe.name", "modinv"), "arch": ("arch", None), "augment": ("augment", False),
    "val_every": ("train.val_every", 500), "val_batches": ("train.val_batches", 25),
    "checkpoint_every": ("train.checkpoint_every", 500), "num_workers": ("train.num_workers", 0),
    "log_every": ("train.log_every", 10), "amp": ("train.amp", "auto"), "stages": ("train.stages", None),
    "steps": ("train.steps", None), "epochs": ("train.epochs", None),
}
# finetune's own options; ``classic`` is train's (the stage of a classic baseline run)
FINETUNE_OPTIONS: dict[str, tuple[str, Any]] = {
    "lam": ("train.lam", None), "stage": ("train.stage", None), "theta_lr": ("train.theta_lr", 1e-5),
    "forward_mode": ("train.forward_mode", "dropout"), "zero_lambda": ("train.zero_lambda", "task"),
}
CLASSIC_OPTIONS: dict[str, tuple[str, Any]] = {"classic": ("train.stage", None)}
# settings stored in another form than the option takes
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "lr": lambda rates: [f"{stage}={rate}" for stage, rate in rates.items()] or None,
    "max_minutes": lambda seconds: None if seconds is None else seconds / 60.0,
}
_CONVERTED = {"lr": "train.lr", "max_minutes": "train.max_seconds"}


def _entry(record: Mapping[str, Any], key: str) -> Any:
    section, _, name = key.rpartition(".")
    where = record.get(section) if section else record
    return where.get(name) if isinstance(where, Mapping) else None


def saved_chain_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of the run's best chain, else of its newest checkpoint's chain (None if neither)."""
    from modinv.inverse.storage import read_manifest

    candidates = [out / "best"] + sorted((out / "checkpoints").glob("*/chain"), reverse=True)
    for folder in candidates:
        if (folder / "manifest.json").is_file():
            return read_manifest(folder)
    return None


def fill_run_options(args: argparse.Namespace, options: Mapping[str, tuple[str, Any]],
                     needed: tuple[str, ...] = ("model", "data")) -> None:
    """Fill every option of ``options`` that was not given (None): from the run in ``args.out`` with
    ``--resume``, else with its default; ``needed`` options must end up set (one sentence if not)."""
    record: Mapping[str, Any] = {}
    if getattr(args, "resume", False):
        from modinv.training.run_folder import verified_run_config

        config = Path(args.out) / "config.json"
        if config.is_file():
            record = verified_run_config(Path(args.out))
            if not isinstance(record, Mapping):
                raise ModinvError(f"cannot resume the run in {str(args.out)!r}: its config.json is missing or is not a "
                                  "run's (not a JSON object)")
            _fill_from_chain(args, Path(args.out))
        elif any(getattr(args, name, None) is None for name in needed):
            raise ModinvError(f"--resume: {str(args.out)!r} holds no config.json to take the run's settings from; "
                              f"give {', '.join('--' + n.replace('_', '-') for n in needed)}")
    for name, (key, default) in options.items():
        if getattr(args, name, None) is None:
            value = _entry(record, key)
            setattr(args, name, default if value is None else value)
    for name, key in _CONVERTED.items():
        if hasattr(args, name) and getattr(args, name) is None and _entry(record, key) is not None:
            setattr(args, name, _CONVERT[name](_entry(record, key)))
    if args.steps is None and args.epochs is None and getattr(args, "max_minutes", None) is None:
        raise ModinvError("give --steps or --epochs (how long to train), or --max-minutes")
    if args.steps is not None and args.epochs is not None:  # one from the run, the other given now
        given_steps = _entry(record, "train.steps") != args.steps
        setattr(args, "epochs" if given_steps else "steps", None)
    missing = [name for name in needed if getattr(args, name, None) is None]
    if missing:
        listed = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ModinvError(f"the following arguments are required: {listed}")


def _fill_from_chain(args: argparse.Namespace, out: Path) -> None:
    """Input size and component variants of a resumed run, from its saved chain."""
    manifest = saved_chain_manifest(out)
    if manifest is None:
        return
    if getattr(args, "input_size", None) is None and manifest.get("input_size"):
        args.input_size = list(manifest["input_size"])
    variants = {s: v for s, v in (manifest.get("variants") or {}).items() if v not in (None, "custom")}
    if getattr(args, "variant", None) is None and variants:
        args.variant = [f"{stage}={name}" for stage, name in variants.items()]
