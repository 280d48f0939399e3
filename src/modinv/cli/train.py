"""``modinv train``: train the modular inverse components of a model on an image source."""

from __future__ import annotations

import argparse

from modinv.cli.common import (VARIANT_HELP, add_amp_arg, add_arch_arg, add_model_args, check_stage_names,
                               loop_settings, model_from_args, non_negative_int, number_in, parse_assignments,
                               positive_float, positive_int, writable_dir)
from modinv.errors import ModinvError


def stage_rate(text: str) -> str:
    """``type=`` of ``--lr``: ``STAGE=LR`` with a positive, finite rate (the stage is checked
    against the model once it is loaded)."""
    try:
        parse_assignments([text], kind=positive_float, what="learning rate")
    except ModinvError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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
    p.add_argument("--batch", type=positive_int,
                   help="global batch size (default 32, the paper's for DETR)")
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
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.cli.resume import CLASSIC_OPTIONS, RUN_OPTIONS, fill_run_options
    from modinv.distributed import init_distributed, shutdown

    fill_run_options(args, {**RUN_OPTIONS, **CLASSIC_OPTIONS})
    if args.classic and args.stages:
        raise ModinvError("--classic trains the whole chain STAGE -> image together; leave out --stages")
    out = writable_dir(args.out)
    settings = dict(stages=args.stages, **run_settings(args))
    dist, device = init_distributed(args.device)  # one process per GPU under torchrun
    try:
        return _train(args, out, settings, dist, device)
    finally:
        shutdown(dist)


def _train(args: argparse.Namespace, out, settings: dict, dist, device) -> int:
    from modinv.inverse.chain import InverseChain
    from modinv.training.data import split_sources
    from modinv.training.modular import ModularTrainer, TrainConfig

    model = model_from_args(args, device=device)
    variants = parse_assignments(args.variant, what="variant", option="--variant")
    for option, names in (("--stages", args.stages or []), ("--lr", settings["lr"]), ("--variant", variants)):
        check_stage_names(model, names, option)  # before any work; the engine checks they train
    if args.classic:
        from modinv.training.classic import build_classic_chain

        model.stage_index(args.classic)  # a clear error for an unknown stage
        chain = build_classic_chain(model, args.classic, arch=args.arch or "default", seed=args.seed, variants=variants)
    else:
        chain = InverseChain.build(model, arch=args.arch or "default", seed=args.seed, variants=variants)
    train, val = split_sources(args.data, tuple(model.input_size), val_data=args.val_data,
                               val_fraction=args.val_fraction, augment=args.augment, seed=args.seed)
    run_info = {"data": args.data, "val_data": args.val_data, "val_fraction": args.val_fraction, "augment": args.augment,
                "arch": chain.arch, "command": "train"}
    if args.classic:
        from modinv.training.classic import ClassicConfig, ClassicTrainer

        trainer = ClassicTrainer(model, chain, train, val, out, ClassicConfig(stage=args.classic, **settings),
                                 run_info=run_info, dist=dist)
    else:
        trainer = ModularTrainer(model, chain, train, val, out, TrainConfig(**settings), run_info=run_info, dist=dist)
    best = trainer.fit(resume=args.resume, progress=not args.no_progress)
    if not dist.is_main:
        return 0
    if args.classic:
        record = best.get(args.classic)
        if record:
            print(f"classic {args.classic}->img: best validation image MSE {record['val_loss']:.5f} at step {record['step']}")
    else:
        for stage, record in best.items():
            print(f"{stage}⁻¹: best validation loss {record['val_loss']:.5f} at step {record['step']}")
    if trainer.stop_reason == "time budget":
        print(f"stopped by the time budget after {trainer.step} steps")
    print(f"inverse chain written to {out / 'best'}")
    return 0
