"""Arguments and loaders shared by the subcommands, and the checks of option values.

Option values are checked while the command line is parsed, before any work, by the ``type=``
functions below (:func:`positive_int`, :func:`non_negative_int`, :func:`positive_float`,
:func:`number_in`, :func:`image_side`, :func:`seed_int`): a bad value exits with status 2 and argparse's one-line
``modinv CMD: error: argument --OPTION: ...`` after the usage line. What needs the model (stage
names) is checked right after it is loaded (:func:`check_stage_names`), before anything else.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
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
from modinv.runtime import AMP_CHOICES, MAX_SEED, resolve_device

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


def seed_int(text: str) -> int:
    """A seed: a whole number from 0 to :data:`~modinv.runtime.MAX_SEED`."""
    value = _int_at_least(text, 0, "a whole number, 0 or more")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {value}")
    return value


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
    parser.add_argument("--seed", type=seed_int, default=None if recorded else 0,
                        help=f"seed of random weights and of training (default: {seed_default})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"),
                        help="override the model's input size (H W)" + also)


# the values of --arch (modinv.inverse.chain.ARCHS) and what they mean, said the same way everywhere
ARCH_CHOICES = ("default", "paper", "auto")
ARCH_HELP = ("inverse components: default (the paper's where the model's family declares them: detr-r50, vit-b16, "
             "vit-b16-noselfattn, deit-b16, swin-b; else auto), paper, or auto (built from the stage shapes of "
             "any model); default: default")


VARIANT_HELP = ("a component variant of arch paper: bb=local (each token paints its own patch), pred=oh (pred⁻¹ "
                "fed the one-hot class) or pred=fd (fed the full class distribution)")
INVERSE_HELP = "inverse chain: a folder (RUN/best; a RUN folder means its best/) or hf:USER/NAME; it names the model"


def add_arch_arg(parser: argparse.ArgumentParser, default: str | None = "default") -> None:
    """``--arch``, the same word, choices, default and help in every command that builds a chain
    (``default=None``: filled in later, e.g. from a resumed run, else ``"default"``)."""
    parser.add_argument("--arch", choices=ARCH_CHOICES, default=default, help=ARCH_HELP)


def add_amp_arg(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--amp`` of the training commands (``default=None``: filled in later, e.g. from a resumed run)."""
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default=default,
        help="bf16 autocast while training: auto (CUDA / bf16-capable CPUs; default), bf16, off",
    )


def add_report_amp_arg(parser: argparse.ArgumentParser, what: str = "the reported numbers") -> None:
    """``--amp`` of the commands that report numbers or draw reconstructions (evaluate, analyze,
    reconstruct, eval-task): float32 unless the user opts in to bf16 autocast (DESIGN.md,
    "Training"); ``what`` says what the precision applies to."""
    parser.add_argument(
        "--amp", choices=AMP_CHOICES, default="off",
        help=f"precision of {what}: off (float32, default), bf16 (bf16 autocast), "
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


# Output folders this command created (parents first): a command that fails before writing
# anything into them removes them again (remove_unused_output_dirs), so no empty folder is left.
CREATED_DIRS: list[Path] = []


def make_output_dirs(path: Path) -> None:
    """``mkdir -p path``, recording in :data:`CREATED_DIRS` each folder it creates."""
    missing, current = [], path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    path.mkdir(parents=True, exist_ok=True)
    CREATED_DIRS.extend(reversed(missing))


def remove_unused_output_dirs() -> None:
    """Remove the folders of :data:`CREATED_DIRS` that are still empty (deepest first); called
    when a command fails, so that it leaves no half-made output behind."""
    for folder in reversed(CREATED_DIRS):
        try:
            folder.rmdir()
        except OSError:  # not empty (results were written), or already gone
            pass
    CREATED_DIRS.clear()


def writable_dir(path: str | Path, inputs: Iterable[str | Path] = (), run: bool = False) -> Path:
    """Create ``path`` if needed and make sure files can be written there, before any work: a
    file is created and removed (what permission bits cannot tell: read-only mounts, no inodes)
    and a disk with less than :data:`MIN_FREE_BYTES` free is refused, in one sentence naming it.
    Refused too: a folder that is one of ``inputs`` or lies inside an inverse chain or a run folder
    (``run``: the folder is a training run's own, so only the folders above it are looked at)."""
    path = Path(path)
    _refuse_owned(path.parent if run else path)
    _refuse_inputs(path, inputs)
    try:
        make_output_dirs(path)
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


def writable_file(path: str | Path, suffixes: tuple[str, ...] | None = None,
                  inputs: Iterable[str | Path] = ()) -> Path:
    """Check before any work is done that the file ``path`` can be written (its folder is created);
    ``suffixes``: the accepted file name endings (lower case, with the dot), so that no file is
    written over one of another kind (a JSON over a photo). Refused too: a file that is one of
    ``inputs`` (see :func:`input_paths`) or lies inside an inverse chain or a run folder."""
    path = Path(path)
    if path.is_dir():
        raise ModinvError(f"output file {str(path)!r} is an existing folder; give a file name inside it")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ModinvError(
            f"cannot write {str(path)!r}: the file name must end in {', '.join(suffixes)}"
        )
    _refuse_inputs(path, inputs)
    writable_dir(path.parent if str(path.parent) else ".")  # refuses chain and run folders
    if path.exists() and not os.access(path, os.W_OK):
        raise ModinvError(f"output file {str(path)!r} exists and is not writable")
    return path


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every path the options of a command read from (option values and lists of them, with a
    data-source prefix such as ``folder:`` removed), for :func:`writable_file`'s check."""
    found: list[str] = []
    for name, value in vars(args).items():
        if name == "out" or callable(value):
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)):
                text = str(item)
                found.append(text.split(":", 1)[1] if _SOURCE_PREFIX.match(text) else text)
    return found


_SOURCE_PREFIX = re.compile(r"^[a-z]+:(?!//)")


def _refuse_inputs(path: Path, inputs: Iterable[str | Path]) -> None:
    target = _real(path)
    for given in inputs:
        if str(given) and os.path.exists(given) and _real(Path(given)) == target:
            raise ModinvError(f"the output {str(path)!r} is also an input of this command; write it elsewhere, "
                              "or the input would be overwritten")


def _refuse_owned(folder: Path) -> None:
    """One sentence when ``folder`` is, or lies inside, an inverse chain or a training run folder:
    what modinv wrote there would be overwritten or mixed with foreign files."""
    from modinv.training.run_folder import LOCK_FILE, run_config

    for place in [_real(folder), *_real(folder).parents]:
        if _is_chain_folder(place):
            raise ModinvError(f"the output {str(folder)!r} lies inside the inverse chain {str(place)!r}; "
                              "write results outside it")
        if run_config(place) is not None or (place / LOCK_FILE).is_file():
            raise ModinvError(f"the output {str(folder)!r} lies inside the training run folder {str(place)!r}; "
                              "write results outside it")


def _is_chain_folder(place: Path) -> bool:
    from modinv.inverse.storage import FORMAT, MANIFEST

    manifest = place / MANIFEST
    if not manifest.is_file():
        return False
    try:
        with open(manifest, encoding="utf-8") as f:
            return f'"{FORMAT}"' in f.read(4096)  # the format entry comes first in the files modinv writes
    except OSError:
        return False


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


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
    if hasattr(args, "no_reuse_memory"):
        settings["reuse_memory"] = not args.no_reuse_memory
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


def chain_model_seed(manifest: dict, folder: Path | None = None) -> int | None:
    """The seed of the random weights a chain was made for: the manifest's ``model_seed`` (which
    chains saved from a random-weights model record), else, for older chains, the ``--seed`` of the training run the chain belongs to (``folder/../config.json``,
    which ``modinv train`` writes next to ``best/`` and whose ``--seed`` seeds the weights); None
    when neither tells (component seeds need not be the model's)."""
    from modinv.inverse.card import recorded_model_seed

    recorded = recorded_model_seed(manifest)
    if recorded is not None:
        return recorded
    config = folder.parent / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        return None
    from modinv.fileio import read_json

    try:
        run = read_json(config, "run config")
    except ModinvError:
        return None
    seed = (run.get("train") or {}).get("seed") if isinstance(run, dict) else None
    same = isinstance(run, dict) and run.get("model") == manifest.get("model") and run.get("weights") == "random"
    return seed if same and isinstance(seed, int) else None


def chain_settings(manifest: dict, folder: Path | None = None) -> dict:
    """``{model, weights, seed, input_size}`` of the model a chain's manifest says it was made for
    (``seed``: of random weights, None when unknown or irrelevant)."""
    size, weights = manifest.get("input_size"), str(manifest.get("weights", "pretrained"))
    return {"model": manifest["model"], "weights": weights,
            "seed": chain_model_seed(manifest, folder) if weights == "random" else None,
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


def _chain_disagreement(given: dict, settings: dict, where: str, source: str | None = None) -> str | None:
    """One sentence when a setting in ``given`` (from the command line, or from the chain ``source``)
    contradicts the chain in ``where``; None when they agree."""
    for name, option in CHAIN_SETTINGS.items():
        value, recorded = given.get(name), settings[name]
        if value is None or recorded is None or _same_setting(name, value, recorded):
            continue
        shown = " ".join(map(str, value)) if name == "input_size" else value
        kept = " ".join(map(str, recorded)) if name == "input_size" else recorded
        if source is not None:
            return (f"the --inverse chains {source} and {where} were made for different models ({option} {shown} vs "
                    f"{kept}); give them to separate commands")
        return (f"{option} {shown} does not match the chain in {where}, which was made for {option} {kept}; "
                "leave it out to use the chain's")
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
    given = {name: getattr(args, name, None) for name in CHAIN_SETTINGS}
    first: tuple[str, dict] | None = None
    for spec in specs:
        folder = resolve_chain_spec(spec)
        settings = chain_settings(read_manifest(folder), folder)
        why = _chain_disagreement(given, settings, repr(spec)) or (
            first and _chain_disagreement(first[1], settings, repr(spec), source=repr(first[0])))
        if why:
            raise ModinvError(why)
        first = first or (spec, settings)
    for name in CHAIN_SETTINGS:  # what the options leave open, the (first) chain says
        if given[name] is None:
            setattr(args, name, first[1][name])
    args.seed = 0 if args.seed is None else args.seed  # a chain that cannot tell: the usual default
    args.weights = "pretrained" if args.weights is None else args.weights
    return model_from_args(args, device=device)


def caption_parts(model: StagedModel, chains=(), data: str | None = None, where: Iterable[str] = (),
                  seed: int | None = None) -> dict:
    """The caption line of a command's figures (:func:`modinv.figures.figure_caption`): model,
    weights (with ``seed`` for random weights), the chain folders and their training steps, data."""
    weights = str(model.weights)
    if weights == "random" and seed is not None:
        weights = f"{weights} (seed {seed})"
    parts: dict = {"model": model.name, "weights": weights, "data": data}
    chains, where = list(chains), list(where)
    if where:
        parts["chain"] = ", ".join(str(w) for w in where)
    steps = sorted({c.training_steps for c in chains if c.training_steps is not None})
    if steps:
        parts["steps"] = steps[0] if len(steps) == 1 else "/".join(map(str, steps))
    elif chains:
        parts["steps"] = "untrained or unknown"
    return parts
