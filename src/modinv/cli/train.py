"""``modinv train``: train the modular inverse components of a model on an image source."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from modinv.cli.common import (VARIANT_HELP, add_amp_arg, add_arch_arg, add_model_args, check_stage_names,
                               loop_settings, model_from_args, non_negative_int, number_in, parse_assignments,
                               positive_float, positive_int, writable_dir)
from modinv.errors import ModinvError

if TYPE_CHECKING:
    from modinv.inverse.chain import InverseChain
    from modinv.models.base import StagedModel


def stage_rate(text: str) -> str:
    """``type=`` of ``--lr``: ``STAGE=LR`` with a positive, finite rate (the stage is checked
    against the model once it is loaded)."""
    try:
        parse_assignments([text], kind=positive_float, what="learning rate")
    except ModinvError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


DEFAULT_BATCH = 32


def recipe_name(text: str) -> str:
    """``type=`` of ``--recipe``: a name some model family declares (the model checks its own)."""
    from modinv.models.recipes import RECIPE_NAMES

    if text not in RECIPE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown recipe {text!r}; valid: {', '.join(RECIPE_NAMES)}")
    return text


def apply_recipe(args: argparse.Namespace, model: StagedModel, chain: InverseChain, settings: dict,
                 classic_stage: str | None = None, finetune: bool = False) -> dict:
    """Put ``--recipe``'s settings under the command's explicit ones (``--batch``, ``--lr``) into
    ``settings``, its input normalisation on ``model``, and its record on ``chain``; returns the record."""
    from modinv.models.recipes import get_recipe, train_settings

    recipe = get_recipe(model, args.recipe)
    variants = {s: chain.component_meta[s].get("variant") for s in chain.stages}
    base = train_settings(recipe, list(settings.get("stages") or chain.stages), classic_stage, finetune, variants)
    if recipe.precision == "float32" and args.amp not in ("auto", "off"):
        raise ModinvError(f"--recipe {recipe.name} trains in float32; leave out --amp {args.amp}")
    explicit_lr = settings["lr"]
    settings.update({k: v for k, v in base.items() if k not in ("batch_size", "lr")})
    settings["lr"] = {**base["lr"], **explicit_lr}
    if settings["batch_size"] is None:
        settings["batch_size"] = base.get("batch_size", DEFAULT_BATCH)
    if recipe.input_normalization is not None:
        model.set_normalization(*recipe.input_normalization)
    record = recipe.to_dict()
    chain.layout["recipe"] = record
    return record


def add_run_args(p: argparse.ArgumentParser, data_help: str) -> None:
    """The arguments of a training run that ``train`` and ``finetune`` share."""
    p.add_argument("--data", help=f"{data_help} (required for a new run; with --resume: the run's)")
    p.add_argument("--val-data", help="validation source (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=number_in(0, 1, high_open=True),
                   help="held-out share when no --val-data (default 0.1)")
    p.add_argument("--out", required=True,
                   help="run folder: config.json, log.jsonl, best/, checkpoints/ (a new run needs an empty one)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="optimisation steps (this or --epochs; with --resume: "
                                                           "default the run's)")
    length.add_argument("--epochs", type=positive_int, help="passes over the training data")
    p.add_argument("--max-minutes", type=positive_float, metavar="M",
                   help="time budget: stop after M minutes of training even if --steps/--epochs are not done "
                        "(validates, keeps the best, writes a checkpoint that --resume continues)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"global batch size (default: the recipe's, else {DEFAULT_BATCH})")
    p.add_argument("--recipe", type=recipe_name,
                   help="training recipe: modinv (default: train-mode BatchNorm, the weights' normalisation, "
                        "bf16 where native, image losses on [0, 1] pixels) or paper (what the authors' scripts "
                        "ran: see the README's recipe table)")
    add_arch_arg(p, default=None)
    p.add_argument("--variant", action="append", metavar="STAGE=NAME", help=VARIANT_HELP)
    p.add_argument("--lr", action="append", type=stage_rate, metavar="STAGE=LR",
                   help="override an inverse component's learning rate (a resume may change it)")
    p.add_argument("--val-every", type=positive_int, help="steps between validations (default 500)")
    p.add_argument("--val-batches", type=positive_int, help="batches per validation (default 25)")
    p.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default 500)")
    p.add_argument("--num-workers", type=non_negative_int, help="data-loading worker processes (default 0)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its latest checkpoint with its settings (options "
                               "left out are the run's; more --steps/--epochs, other --lr or intervals are applied "
                               "and recorded)")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace the run in --out: its best/, checkpoints/, log.jsonl and config.json are "
                               "removed first (other files stay)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_amp_arg(p, default=None)


def run_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig settings of :func:`add_run_args` (and the flags some commands add). Refuses
    at once (before any work) an --out that holds another run without --resume or --overwrite;
    the run itself checks again under its lock."""
    from modinv.training.run_folder import check_run_folder

    check_run_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    return dict(loop_settings(args), max_seconds=None if args.max_minutes is None else args.max_minutes * 60.0,
                overwrite=args.overwrite)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train inverse components (one frozen forward feeds all of them)")
    add_model_args(p, from_run=True)
    p.add_argument(
        "--classic", metavar="STAGE",
        help="instead of the modular components, train the classic baseline: a fresh chain STAGE -> image "
             "end-to-end on image MSE (Dosovitskiy & Brox)",
    )
    add_run_args(p, data_help="samples | folder:PATH | coco:ROOT[:split] | imagenet:ROOT")
    p.add_argument("--stages", nargs="+", help="components to train (default: all)")
    p.add_argument("--augment", action="store_true", default=None, help="random crops and flips of training images")
    p.add_argument("--log-every", type=positive_int, help="steps between log records (default 10)")
    p.add_argument("--compile", action="store_true", help="torch.compile each trained component")
    p.add_argument("--no-channels-last", action="store_true",
                   help="leave convolution layouts as they come (default: the device's fastest memory format: "
                        "channels-last on CUDA and bf16 CPUs, NCHW for float32 on CPUs)")
    p.add_argument("--no-reuse-memory", action="store_true",
                   help="on CPUs, hand freed memory back to the system after every step (default: keep it for "
                        "the next step, which saves page faults; the process keeps its peak memory meanwhile)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.cli.resume import CLASSIC_OPTIONS, RUN_OPTIONS, fill_run_options
    from modinv.distributed import init_distributed, shutdown

    fill_run_options(args, {**RUN_OPTIONS, **CLASSIC_OPTIONS})
    if args.classic and args.stages:
        raise ModinvError("--classic trains the whole chain STAGE -> image together; leave out --stages")
    out = writable_dir(args.out, run=True)
    settings = dict(stages=args.stages, **run_settings(args))
    dist, device = init_distributed(args.device)  # one process per GPU under torchrun
    try:
        return _train(args, out, settings, dist, device)
    finally:
        shutdown(dist)


def _train(args: argparse.Namespace, out, settings: dict, dist, device) -> int:
    from modinv.training.entry import fresh_chain, train

    model = model_from_args(args, device=device)
    variants = parse_assignments(args.variant, what="variant", option="--variant")
    for option, names in (("--stages", args.stages or []), ("--lr", settings["lr"]), ("--variant", variants)):
        check_stage_names(model, names, option)  # before any work; the engine checks they train
    stage = args.classic
    if stage:
        model.stage_index(stage)  # a clear error for an unknown stage
    chain = fresh_chain(model, stage, args.arch or "default", args.seed, variants)
    recipe = apply_recipe(args, model, chain, settings, classic_stage=stage)
    result = train(model, args.data, out, method="classic" if stage else "modular", stage=stage,
                   settings=settings, chain=chain, val_data=args.val_data, val_fraction=args.val_fraction,
                   augment=args.augment, run_info={"command": "train", "recipe": recipe}, dist=dist,
                   resume=args.resume, progress=not args.no_progress)
    if not dist.is_main:
        return 0
    if args.classic:
        record = result.best.get(args.classic)
        if record:
            print(f"classic {args.classic}->img: best validation image MSE {record['val_loss']:.5f} at step {record['step']}")
    else:
        for stage, record in result.best.items():
            print(f"{stage}⁻¹: best validation loss {record['val_loss']:.5f} at step {record['step']}")
    if result.stop_reason == "time budget":
        print(f"stopped by the time budget after {result.steps} steps")
    print(f"inverse chain written to {out / 'best'}")
    return 0
