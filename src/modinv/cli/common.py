"""Arguments and loaders shared by the subcommands, and the checks of option values.

Option values are checked while the command line is parsed, before any work, by the ``type=``
functions below (:func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`,
:func:`number_in`, :func:`image_side`): a bad value exits with status 2 and argparse's one-line
``modinv CMD: error: argument --OPTION: ...`` after the usage line. What needs the model (stage
names) is checked right after it is loaded (:func:`check_stage_names`), before anything else.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from modinv.errors import ModinvError
from modinv.fileio import os_error_sentence
from modinv.models.base import StagedModel
from modinv.models.registry import load_model
from modinv.runtime import AMP_CHOICES, resolve_device

# The largest --input-size side accepted: beyond it a model's activations would not fit in memory.
MAX_INPUT_SIDE = 4096
# An output folder with less free space than this is refused before any work (the disk is full).
MIN_FREE_BYTES = 1 << 20


# -- argparse ``type=`` checks (reusable by every command) -----------------------------------------
def positive_int(text: str) -> int:
    """A whole number of at least 1 (batch sizes, image limits, steps, intervals)."""
    return _int_at_least(text, 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (worker counts, seeds, optional counts)."""
    return _int_at_least(text, 0, "a whole number, 0 or more")


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates, durations)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A ``type=`` accepting finite numbers in [low, high]; ``low_open``/``high_open`` exclude the ends."""

    def parse(text: str) -> float:
        value = _number(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def image_side(text: str) -> int:
    """One side of ``--input-size`` in pixels: 1 to :data:`MAX_INPUT_SIDE` (the model checks its own
    constraints, such as whole patches, when it is loaded)."""
    value = _int_at_least(text, 1, "a positive number of pixels")
    if value > MAX_INPUT_SIDE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INPUT_SIDE} pixels, got {value}")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def check_stage_names(model: StagedModel, names: Iterable[str], option: str) -> None:
    """One sentence naming ``option`` when one of ``names`` is not a stage of ``model``."""
    unknown = [name for name in names if name not in model.stages]
    if unknown:
        raise ModinvError(
            f"{option} names {unknown[0]!r}, which is not a stage of {model.name!r}; its stages are "
            f"{', '.join(model.stages)}"
        )


def add_model_args(parser: argparse.ArgumentParser, from_chain: bool = False, from_run: bool = False) -> None:
    """``--model``, ``--weights``, ``--seed``, ``--device``, ``--input-size``. ``from_chain``: the
    command takes ``--inverse``, whose manifest supplies model, weights, seed and input size (the
    options become optional and, when given, must agree with it; see :func:`model_for_chains`).
    ``from_run``: a training command, whose ``--resume`` reads them from the run's config.json
    (they default to None here; the command fills them in)."""
    if from_chain:
        also = " (default: the --inverse chain's)"
        weights_default = seed_default = "the chain's"
    elif from_run:
        also = " (with --resume: the run's)"
        weights_default, seed_default = "pretrained; with --resume: the run's", "0; with --resume: the run's"
    else:
        also, weights_default, seed_default = "", "pretrained", "0"
    recorded = from_chain or from_run
    parser.add_argument("--model", required=not recorded,
                        help="model name: detr-r50, vit-b16, deit-b16, swin-b, mobilenet-v2, timm:<name>, "
                             f"hf:<id or folder>{also}")
    parser.add_argument("--weights", default=None if recorded else "pretrained",
                        help=f"pretrained | random | PATH of a weights file (default: {weights_default})")
    parser.add_argument("--seed", type=non_negative_int, default=None if recorded else 0,
                        help=f"seed of random weights and of training (default: {seed_default})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"),
                        help="override the model's input size (H W)" + also)


def add_amp_arg(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--amp`` of the training commands (``default=None``: filled in later, e.g. from a resumed run)."""
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default=default,
        help="bf16 autocast while training: auto (CUDA / bf16-capable CPUs; default), bf16, off",
    )


def add_report_amp_arg(parser: argparse.ArgumentParser) -> None:
    """``--amp`` of the commands that report numbers (evaluate, analyze, reconstruct, eval-task):
    float32 unless the user opts in to bf16 autocast (DESIGN.md, "Training")."""
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default="off",
        help="precision of the reported numbers: off (float32, default), bf16 (bf16 autocast), "
             "auto (bf16 autocast on CUDA / bf16-capable CPUs)",
    )


def model_from_args(args: argparse.Namespace, device=None) -> StagedModel:
    """The model the arguments name, on ``device`` (default: the one --device resolves to)."""
    options = {"input_size": tuple(args.input_size)} if getattr(args, "input_size", None) else {}
    device = device if device is not None else resolve_device(args.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModinvError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} "
                          "CUDA device(s), cuda:0 onwards")
    return load_model(args.model, weights=args.weights, seed=args.seed, device=device, **options)


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and make sure files can be written there, before any work: a
    file is created and removed (what permission bits cannot tell: read-only mounts, no inodes)
    and a disk with less than :data:`MIN_FREE_BYTES` free is refused, in one sentence naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path, "create output folder")) from None
    if not os.access(path, os.W_OK):
        raise ModinvError(f"output folder {str(path)!r} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".modinv-probe-")
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(path).free
    except OSError as exc:
        raise ModinvError(os_error_sentence(exc, path, "write into output folder")) from None
    if free < MIN_FREE_BYTES:
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise ModinvError(os_error_sentence(full, path, "write into output folder"))
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


def parse_assignments(items: list[str] | None, kind: Callable = str, what: str = "value",
                      option: str | None = None) -> dict:
    """``["bb=local", "pred=oh"]`` -> ``{"bb": "local", "pred": "oh"}``; ``kind`` converts each value
    (a ``type=`` check above, e.g. :func:`positive_float`, also checks it); ``option`` is named in
    the errors."""
    prefix = f"{option}: " if option else ""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ModinvError(f"{prefix}expected STAGE={what.upper()}, got {item!r}")
        try:
            out[key] = kind(value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            detail = f" ({exc})" if isinstance(exc, argparse.ArgumentTypeError) else ""
            raise ModinvError(f"{prefix}bad {what} in {item!r}{detail}") from None
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


# -- the model a chain was made for (commands taking --inverse) ------------------------------------
# The settings a chain's manifest fixes: option dest -> what the option is called in messages.
CHAIN_SETTINGS = {"model": "--model", "weights": "--weights", "seed": "--seed", "input_size": "--input-size"}


def chain_folder(spec: str | os.PathLike) -> str:
    """The chain an ``--inverse`` value names: a training run's folder (no manifest, but a
    ``best/`` chain) means its ``best/``, which is said on stderr; anything else as given."""
    folder = Path(spec)
    if not (folder / "manifest.json").is_file() and (folder / "best" / "manifest.json").is_file():
        print(f"modinv: {str(folder)!r} is a training run; using its best chain {str(folder / 'best')!r}",
              file=sys.stderr)
        return str(folder / "best")
    return str(spec)


def chain_model_seed(manifest: dict) -> int | None:
    """The seed of the random weights a chain was made for: the manifest's own record when it has
    one, else the one seed its components were built with (``modinv train`` uses its ``--seed``
    for both); None when the manifest cannot tell."""
    for key in ("model_seed", "weights_seed"):
        if isinstance(manifest.get(key), int):
            return manifest[key]
    seeds = {s for s in (manifest.get("seeds") or {}).values() if isinstance(s, int)}
    return seeds.pop() if len(seeds) == 1 else None


def chain_settings(manifest: dict) -> dict:
    """``{model, weights, seed, input_size}`` of the model a chain's manifest says it was made for."""
    size, weights = manifest.get("input_size"), str(manifest.get("weights", "pretrained"))
    return {"model": manifest["model"], "weights": weights,
            "seed": chain_model_seed(manifest) if weights == "random" else None,  # it decides random weights only
            "input_size": list(size) if size else None}


def _same_setting(name: str, given: object, recorded: object) -> bool:
    if name == "weights" and from_path(str(given)) and from_path(str(recorded)):
        return Path(str(given)).expanduser().resolve() == Path(str(recorded)).expanduser().resolve()
    if name == "input_size":
        return list(given) == list(recorded)
    return given == recorded


def from_path(weights: str) -> bool:
    """Whether a ``--weights`` value names a file (not ``pretrained`` or ``random``)."""
    return weights not in ("pretrained", "random")


def _chain_disagreement(args: argparse.Namespace, settings: dict, where: str) -> str | None:
    """One sentence when an option given on the command line contradicts the chain's manifest."""
    for name, option in CHAIN_SETTINGS.items():
        given, recorded = getattr(args, name, None), settings[name]
        if given is None or recorded is None:
            continue
        if not _same_setting(name, given, recorded):
            shown = " ".join(map(str, given)) if name == "input_size" else given
            kept = " ".join(map(str, recorded)) if name == "input_size" else recorded
            return (f"{option} {shown} does not match the chain in {where}, which was made for {option} {kept}; "
                    f"leave it out to use the chain's")
    return None


def model_for_chains(args: argparse.Namespace, device=None) -> StagedModel:
    """The model the ``--inverse`` chain(s) were made for, read from their manifests: ``--model``,
    ``--weights``, ``--seed`` and ``--input-size`` are taken from there when not given, and refused
    in one sentence naming both when they disagree. Run folders are replaced by their ``best/``
    in ``args.inverse``; several chains must have been made for the same model."""
    from modinv.hub import resolve_chain_spec
    from modinv.inverse.storage import read_manifest

    single = not isinstance(args.inverse, (list, tuple))
    specs = [chain_folder(p) for p in ([args.inverse] if single else args.inverse)]
    args.inverse = specs[0] if single else specs
    first = None
    for spec in specs:
        settings = chain_settings(read_manifest(resolve_chain_spec(spec)))
        if first is not None and settings != first[1]:
            raise ModinvError(f"the --inverse chains {first[0]!r} and {spec!r} were made for different models "
                              f"({first[1]['model']} {first[1]['weights']} vs {settings['model']} "
                              f"{settings['weights']}); analyse them one at a time")
        why = _chain_disagreement(args, settings, repr(spec))
        if why:
            raise ModinvError(why)
        first = first or (spec, settings)
    settings = first[1]
    args.model = args.model or settings["model"]
    args.weights = args.weights if args.weights is not None else settings["weights"]
    if args.seed is None:
        if settings["seed"] is None and args.weights == "random":
            raise ModinvError(f"the chain in {first[0]!r} does not say which seed its random weights had; "
                              "give --seed")
        args.seed = settings["seed"] if settings["seed"] is not None else 0
    if args.input_size is None and settings["input_size"]:
        args.input_size = settings["input_size"]
    return model_from_args(args, device=device)
