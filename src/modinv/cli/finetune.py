"""``modinv finetune``: fine-tune a model's forward weights with λ (paper Eq. 3) and train its
classic inverse from one stage to the image."""

from __future__ import annotations

import argparse

from modinv.cli.common import add_amp_arg, add_model_args, loop_settings, model_from_args, parse_assignments, writable_dir
from modinv.cli.eval_task import add_label_map_arg, task_source_options
from modinv.errors import ModinvError

# The paper's stage j of the fine-tuning experiment (Section 4.2); other models default to their last stage.
PAPER_STAGES = {"detr-r50": "dec", "vit-b16": "enc", "vit-b16-noselfattn": "enc"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="λ fine-tuning: L = λ·MSE(θ) + (1-λ)·task loss(θ) + MSE(φ), classic inverse from --stage",
        description="Fine-tune the forward weights θ and train the classic inverse φ (stage -> image) with "
                    "L = λ·L_MSE(θ) + (1-λ)·L_OBJ(θ) + L_MSE(φ). L_OBJ: DETR's Hungarian set loss on a coco: "
                    "source, cross-entropy on an imagenet: source for classifiers. λ = 0 keeps θ frozen (classic "
                    "inversion; --zero-lambda task trains θ on L_OBJ alone instead); λ = 1 ignores the task. "
                    "Writes OUT/best/ (inverse chain + forward.safetensors, loadable with --weights PATH).",
    )
    add_model_args(p)
    p.add_argument("--lam", type=float, required=True, help="λ in [0, 1] (the paper: 0, 0.1, 0.9, 1)")
    p.add_argument("--stage", help="stage j of the inverse (default: dec for detr-r50, enc for ViT, else the last)")
    p.add_argument("--data", required=True, help="coco:ROOT[:split] for detr-r50, imagenet:ROOT for classifiers")
    p.add_argument("--val-data", help="validation source (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share when no --val-data (default 0.1)")
    p.add_argument("--out", required=True, help="run folder: config.json, log.jsonl, best/, checkpoints/")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimisation steps")
    length.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--theta-lr", type=float, default=1e-5, help="Adam learning rate of the forward weights (default 1e-5)")
    p.add_argument("--lr", action="append", metavar="STAGE=LR", help="override an inverse component's learning rate")
    p.add_argument("--forward-mode", choices=("dropout", "eval", "train"), default="dropout",
                   help="forward model mode while θ trains: dropout on + BatchNorm statistics frozen (default), "
                        "eval, or full train mode")
    p.add_argument("--zero-lambda", choices=("frozen", "task"), default="frozen",
                   help="at λ = 0: θ frozen (classic inversion, default) or trained on the task loss alone")
    p.add_argument("--arch", default=None, help="paper | auto (default: paper for detr-r50/vit-b16, else auto)")
    p.add_argument("--variant", action="append", metavar="STAGE=NAME", help="e.g. bb=local")
    add_label_map_arg(p)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-batches", type=int, default=25)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_amp_arg(p)
    p.set_defaults(handler=run, augment=False)


def run(args: argparse.Namespace) -> int:
    from modinv.cli.train import split_sources
    from modinv.training.classic import build_classic_chain
    from modinv.training.finetune import FORWARD_WEIGHTS_FILE, FinetuneConfig, FinetuneTrainer, task_kind

    if not 0.0 <= args.lam <= 1.0:
        raise ModinvError(f"--lam must be in [0, 1], got {args.lam}")
    task_used = args.lam < 1 and (args.lam > 0 or args.zero_lambda == "task")
    if task_used:  # fail before loading anything when the task loss has no targets
        needed = "coco" if args.model == "detr-r50" else "imagenet"
        for spec in filter(None, (args.data, args.val_data)):
            if spec.strip().partition(":")[0] != needed:
                what = "COCO boxes (its set loss)" if needed == "coco" else "class labels (cross-entropy)"
                raise ModinvError(
                    f"with λ = {args.lam:g} {args.model} trains on {what}: pass {needed}:ROOT sources, not {spec!r}"
                )
    out = writable_dir(args.out)
    model = model_from_args(args)
    stage = args.stage or PAPER_STAGES.get(model.name, model.stages[-1])
    model.stage_index(stage)  # a clear error for an unknown stage
    chain = build_classic_chain(model, stage, arch=args.arch or "default", seed=args.seed,
                                variants=parse_assignments(args.variant, what="variant"))
    options = {}
    for spec in (args.data, args.val_data):
        if spec:
            options.update(task_source_options(spec, args.label_map))
    train, val = split_sources(args, tuple(model.input_size), **options)
    config = FinetuneConfig(
        stage=stage,
        lam=args.lam,
        theta_lr=args.theta_lr,
        forward_mode=args.forward_mode,
        zero_lambda=args.zero_lambda,
        **loop_settings(args),
    )
    run_info = {"data": args.data, "val_data": args.val_data, "val_fraction": args.val_fraction,
                "arch": chain.arch, "command": "finetune", "source_options": options}
    trainer = FinetuneTrainer(model, chain, train, val, out, config, run_info=run_info)
    best = trainer.fit(resume=args.resume, progress=not args.no_progress)
    record = best.get(stage)
    what = "(1+λ)·MSE + (1-λ)·task loss" if trainer.theta_trains else "image MSE"
    if record:
        print(f"λ = {args.lam:g}, {stage}->img: best validation {what} {record['val_loss']:.5f} at step {record['step']}")
    print(f"task: {task_kind(model)}; θ {'fine-tuned' if trainer.theta_trains else 'frozen (λ = 0)'}")
    print(f"inverse chain written to {out / 'best'}, forward weights to {out / 'best' / FORWARD_WEIGHTS_FILE}")
    return 0
