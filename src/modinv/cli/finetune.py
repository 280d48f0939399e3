"""``modinv finetune``: fine-tune a model's forward weights with λ (paper Eq. 3) and train its
classic inverse from one stage to the image."""

from __future__ import annotations

import argparse

from modinv.cli.common import (add_model_args, model_from_args, number_in, parse_assignments, positive_float,
                               writable_dir)
from modinv.cli.eval_task import add_label_map_arg, task_source_options
from modinv.cli.train import add_run_args, apply_recipe, run_settings
from modinv.errors import ModinvError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="λ fine-tuning: L = λ·MSE(θ) + (1-λ)·task loss(θ) + MSE(φ), classic inverse from --stage",
        description="Fine-tune the forward weights θ and train the classic inverse φ (stage -> image) with "
                    "L = λ·L_MSE(θ) + (1-λ)·L_OBJ(θ) + L_MSE(φ). L_OBJ: DETR's Hungarian set loss on a coco: "
                    "source, cross-entropy on an imagenet: source for classifiers. λ = 0 trains θ on L_OBJ alone, "
                    "as the paper did (--zero-lambda frozen keeps θ unchanged instead); λ = 1 ignores the task. "
                    "Writes OUT/best/ (inverse chain + forward.safetensors, loadable with --weights PATH).",
    )
    add_model_args(p, from_run=True)
    p.add_argument("--lam", type=number_in(0.0, 1.0),
                   help="λ in [0, 1] (the paper: 0, 0.1, 0.9, 1); required for a new run")
    p.add_argument("--stage", help="stage j of the inverse (default: the model's declared one, e.g. dec for DETR, "
                                   "enc for ViT/DeiT; required for models that declare none)")
    add_run_args(p, data_help="coco:ROOT[:split] for detectors, imagenet:ROOT for classifiers")
    p.add_argument("--theta-lr", type=positive_float, help="Adam learning rate of the forward weights (default 1e-5)")
    p.add_argument("--forward-mode", choices=("dropout", "eval", "train"),
                   help="forward model mode while θ trains: dropout on + BatchNorm statistics frozen (default), "
                        "eval, or full train mode")
    p.add_argument("--zero-lambda", choices=("task", "frozen"),
                   help="at λ = 0: θ trained on the task loss alone (the paper's reading, default) or frozen "
                        "(only the classic inverse of the unmodified model trains)")
    add_label_map_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from modinv.training.entry import fresh_chain, train
    from modinv.training.finetune import FORWARD_WEIGHTS_FILE, default_finetune_stage, task_kind

    from modinv.cli.resume import FINETUNE_OPTIONS, RUN_OPTIONS, fill_run_options

    fill_run_options(args, {**RUN_OPTIONS, **FINETUNE_OPTIONS}, needed=("model", "data", "lam"))
    out = writable_dir(args.out, run=True)
    model = model_from_args(args)
    if args.lam < 1 and (args.lam > 0 or args.zero_lambda == "task"):  # the task loss needs its targets
        needed = "coco" if task_kind(model) == "detection" else "imagenet"
        for spec in filter(None, (args.data, args.val_data)):
            if spec.strip().partition(":")[0] != needed:
                what = "COCO boxes (its set loss)" if needed == "coco" else "class labels (cross-entropy)"
                raise ModinvError(
                    f"with λ = {args.lam:g} {model.name} trains on {what}: pass {needed}:ROOT sources, not {spec!r}"
                )
    options = {}
    for spec in (args.data, args.val_data):
        if spec:
            options.update(task_source_options(spec, args.label_map))
    stage = args.stage or default_finetune_stage(model)
    model.stage_index(stage)  # a clear error for an unknown stage
    chain = fresh_chain(model, stage, args.arch or "default", args.seed,
                        parse_assignments(args.variant, what="variant"))
    settings = run_settings(args)
    recipe = apply_recipe(args, model, chain, settings, finetune=True)
    settings.update(lam=args.lam, theta_lr=args.theta_lr, forward_mode=args.forward_mode, zero_lambda=args.zero_lambda)
    result = train(model, args.data, out, method="finetune", stage=stage, settings=settings, chain=chain,
                   val_data=args.val_data, val_fraction=args.val_fraction, source_options=options,
                   run_info={"command": "finetune", "source_options": options, "recipe": recipe},
                   resume=args.resume, progress=not args.no_progress)
    record = result.best.get(stage)
    theta_trains = result.trainer.objective.theta_trains
    what = "(1+λ)·MSE + (1-λ)·task loss" if theta_trains else "image MSE"
    if record:
        print(f"λ = {args.lam:g}, {stage}->img: best validation {what} {record['val_loss']:.5f} at step {record['step']}")
    how = "frozen (λ = 0, --zero-lambda frozen)" if not theta_trains else (
        "fine-tuned on the task loss alone (λ = 0)" if args.lam == 0 else "fine-tuned")
    print(f"task: {task_kind(model)}; θ {how}")
    print(f"inverse chain written to {out / 'best'}, forward weights to {out / 'best' / FORWARD_WEIGHTS_FILE}")
    return 0
