"""``run_demo``: train the inverse chain on the training photos within the time budget, evaluate it on
the held-out photos, write the figure, the reports and the chain (see :mod:`modinv.demo`)."""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modinv.data import open_source
from modinv.demo.photos import DEFAULT_HELD_OUT, DEFAULT_PHOTOS, PHOTO_SOURCE, DecodedSamples, split_photos
from modinv.demo.report import baseline_notes, report_markdown, summary, top_labels, weights_statement
from modinv.errors import ModinvError
from modinv.fileio import atomic_write_text, write_json
from modinv.metrics import DEFAULT_METRICS

DEFAULT_MODEL = "mobilenet-v2"
DEFAULT_WEIGHTS = "pretrained"
# Training budget of `make demo`: with model loading, evaluation and figures (~30 s) the demo takes
# about 3.5 minutes on 2 CPU cores, leaving 6 for a fresh `make` to download and install .venv.
# An idle 2-core AMD EPYC does ~0.27 s per step (MobileNetV2, 224×224, 6 crops, bf16): ~650 steps.
DEFAULT_MINUTES = 3.0
# Six crops per step (of the 13 training photos: a new permutation of them every epoch, the last
# photo of each permutation skipped). At equal compute, smaller batches learn faster
# here (MobileNetV2 at 128×128, lr 1e-3, held-out MSE s4/s8/s16/s32: 120 steps of 6 crops
# 0.008/0.027/0.071/0.102, 60 steps of 12 crops 0.011/0.031/0.073/0.100).
DEFAULT_BATCH = 6
# The demo trains for minutes, not days: 3× the trainer's default rates (the paper code's 1e-3 for
# conv components -> 3e-3; 1e-4 for attention -> 3e-4). Measured on MobileNetV2 at 128×128, held-out
# s4 MSE after 40 steps of 6 crops: 0.0099 at 3e-3 vs 0.0147 at 1e-3 (0.0084 at 1e-3 takes 120 steps).
LR_SCALE = 3.0


class _Progress:
    """Listens to the engine's log records: keeps the loss history for the report and prints a line
    every ``every_s`` seconds."""

    def __init__(self, say: Callable[[str], None], budget_s: float, every_s: float = 30.0) -> None:
        self.say, self.budget_s, self.every_s = say, budget_s, every_s
        self.history: list[dict[str, Any]] = []
        self.last_print = -math.inf

    def __call__(self, record: dict[str, Any]) -> None:
        if "loss" not in record:
            return
        seconds = float(record["time"])
        self.history.append({"step": record["step"], "seconds": round(seconds, 2), "loss": record["loss"]})
        if seconds - self.last_print >= self.every_s or len(self.history) == 1:
            self.last_print = seconds
            text = ", ".join(f"{s} {v:.4f}" for s, v in record["loss"].items())
            self.say(f"  step {record['step']} ({seconds:.0f} s, {max(self.budget_s - seconds, 0):.0f} s left): "
                     f"loss {text}")


def _train(trainer, say: Callable[[str], None], budget_s: float) -> dict[str, Any]:
    """Run the engine (``trainer.fit``) until its time budget or step limit; Ctrl-C after the first
    step ends training there (the components keep what they learned; the reports are written)."""
    progress = _Progress(say, budget_s)
    trainer.on_record = progress
    trainer.fit(progress=False)
    if trainer.stop_reason == "interrupt":
        say(f"  interrupted after step {trainer.step}; writing the reports")
    history = progress.history
    epochs = trainer.epoch + (trainer.batch_in_epoch > 0)  # epochs begun
    return {"steps": trainer.step, "epochs": epochs, "seconds": trainer.seconds,
            "seconds_per_step": trainer.seconds / max(trainer.step, 1), "stopped_by": trainer.stop_reason,
            "final_loss": history[-1]["loss"] if history else {}, "history": history}


def run_demo(
    out: str | Path = "outputs/demo",
    minutes: float = DEFAULT_MINUTES,
    model: str = DEFAULT_MODEL,
    weights: str = DEFAULT_WEIGHTS,
    *,
    steps: int | None = None,
    held_out: Sequence[str] = DEFAULT_HELD_OUT,
    photos: Sequence[str] = DEFAULT_PHOTOS,
    batch_size: int = DEFAULT_BATCH,
    arch: str = "auto",
    seed: int = 0,
    device: str | torch.device = "auto",
    amp: str = "auto",
    input_size: tuple[int, int] | None = None,
    lr: dict[str, float] | None = None,
    lr_scale: float = LR_SCALE,
    save_chain: bool = True,
    metrics: Sequence[str] = DEFAULT_METRICS,
    lpips_weights: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train inverse components for ``model`` on the training photos, then write the figure and
    reports for the held-out photos into ``out``; returns the report (also ``out/report.json``).

    ``minutes``: training time budget (loading, evaluation and figures come on top, ~30 s for
    MobileNetV2 on 2 CPU cores); ``steps``: stop after this many steps instead (the budget still
    applies when both are given). ``held_out``: sample photos kept out of training, shown and
    evaluated; every other photo of ``photos`` (default: every free sample photo, see
    :mod:`modinv.demo.photos`) trains. ``batch_size``: crops per step (the training photos are
    repeated with fresh crops when they are fewer). ``lr``: per-stage learning rates; stages not
    named get ``lr_scale`` × the trainer's default rate (the paper code's rates, see
    :mod:`modinv.training.optim`). ``metrics``: the image metrics reported (default MSE, PSNR,
    SSIM, LPIPS; LPIPS where its AlexNet weights are found: ``lpips_weights`` or the torch hub cache).
    """
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.analysis.reconstruct import reconstruction_figure
    from modinv.inverse.chain import InverseChain
    from modinv.metrics import load_lpips, parse_metrics
    from modinv.models.registry import load_model
    from modinv.runtime import amp_dtype, resolve_device
    from modinv.training.modular import ModularTrainer, TrainConfig
    from modinv.training.optim import default_learning_rate

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ModinvError(f"minutes must be a positive number, got {minutes}")
    if steps is not None and steps < 1:
        raise ModinvError(f"steps must be at least 1, got {steps}")
    if batch_size < 2:
        raise ModinvError(f"batch size must be at least 2 (the components use BatchNorm), got {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_photos, held = split_photos(held_out, photos)
    metrics = parse_metrics(metrics)
    dev = resolve_device(device)
    options = {"input_size": tuple(input_size)} if input_size else {}

    say(f"loading {model} ({weights} weights) on {dev}")
    net = load_model(model, weights=weights, seed=seed, device=dev, **options)
    is_random, statement = weights_statement(net.name, str(weights), seed)
    if is_random:
        say("NOTE: " + statement)
    size = tuple(net.input_size)
    chain = InverseChain.build(net, arch=arch, seed=seed)
    inverse_params = {s: sum(p.numel() for p in chain.components[s].parameters()) for s in chain.stages}

    crops = max(1, math.ceil(batch_size / len(train_photos)))
    train_source = DecodedSamples(train_photos * crops, size=size, augment=True, seed=seed,
                                   spec="samples:" + ",".join(train_photos))
    rates = {s: float((lr or {}).get(s, lr_scale * default_learning_rate(net, s, chain.components[s])))
             for s in chain.stages}
    budget = minutes * 60.0
    # the engine's run folder (config.json, log.jsonl, best/, one final checkpoint) is OUT/training
    config = TrainConfig(steps=steps, max_seconds=budget, batch_size=batch_size, seed=seed, lr=rates, amp=amp,
                         drop_last=True, log_every=1, checkpoint_every=10**9, stop_on_interrupt=True,
                         overwrite=True)  # a demo run replaces the previous one in OUT
    trainer = ModularTrainer(net, chain, train_source, None, out / "training", config)
    dtype = amp_dtype(dev, amp)
    load_seconds = time.perf_counter() - t0
    say(f"training {', '.join(s + '⁻¹' for s in chain.stages)} ({arch} arch, {sum(inverse_params.values()):,} "
        f"parameters) on {len(train_photos)} photos ({', '.join(train_photos)}), random crops + flips, batch "
        f"{batch_size}, {'bf16 autocast' if dtype else 'float32'}; budget "
        f"{budget:.0f} s" + (f" or {steps} steps" if steps else ""))
    training = _train(trainer, say, budget)
    say(f"trained {training['steps']} steps in {training['seconds']:.0f} s "
        f"({training['seconds_per_step']:.2f} s/step, stopped by {training['stopped_by']})")
    chain.eval()

    held_source = open_source("samples:" + ",".join(held), size=size)
    seen_source = open_source("samples:" + ",".join(train_photos), size=size)
    lpips = load_lpips(lpips_weights, device=dev) if "lpips" in metrics else None
    evaluation = {
        key: evaluate_chain(net, chain, source, amp="off", progress=False, metrics=metrics, lpips=lpips)
        | {"photos": names}
        for key, source, names in (("held_out", held_source, held), ("train_photos", seen_source, train_photos))
    }
    images = torch.stack([held_source[i]["image"] for i in range(len(held_source))])
    labels = top_labels(net, images, held)
    train_images = torch.stack([seen_source[i]["image"] for i in range(len(seen_source))])
    train_labels = top_labels(net, train_images, train_photos)
    row_titles = [
        f"{lab['photo']}\n{lab['label']} {lab['probability']:.0%}" if lab["label"] is not None and not is_random
        else lab["photo"] for lab in labels  # a random network's class labels mean nothing
    ]
    figure = reconstruction_figure(net, chain, images, out / "reconstructions.png", row_titles=row_titles)
    if save_chain:
        chain.save(out / "inverse", training={"steps": training["steps"], "seconds": round(training["seconds"], 1),
                                              "batch_size": batch_size, "seed": seed,
                                              "data": "samples:" + ",".join(train_photos) + " (augmented)"},
                   metrics={s: {"held_out_mse": evaluation["held_out"]["stages"][s]["mse"]} for s in chain.stages})

    report = {
        "model": net.name,
        "weights": str(weights),
        "weights_are_random": is_random,
        "weights_statement": statement,
        "arch": chain.arch,
        "stages": list(chain.stages),
        "input_size": list(size),
        "inverse_parameters": inverse_params,
        "data": {
            "source": PHOTO_SOURCE,
            "train_photos": train_photos,
            "held_out_photos": held,
            "held_out_rule": "held-out photos are never used in training; they are the ones shown, labelled "
                             "and evaluated (the training photos are evaluated separately for contrast)",
            "augmentation": "random crop (50-100% of the area, aspect 3/4-4/3) resized to the input size, "
                            "horizontal flip with probability 1/2; new crops every epoch",
            "crops_per_photo_per_epoch": crops,
        },
        "training": {
            "minutes_budget": minutes,
            "steps_limit": steps,
            "steps": training["steps"],
            "epochs": training["epochs"],
            "batch_size": batch_size,
            "seconds": round(training["seconds"], 2),
            "seconds_per_step": round(training["seconds_per_step"], 4),
            "stopped_by": training["stopped_by"],
            "learning_rates": dict(trainer.lrs),
            "precision": "bf16 autocast" if dtype is not None else "float32",
            "device": str(dev),
            "seed": seed,
            "final_loss": training["final_loss"],
            "loss_history": training["history"],
        },
        "evaluation": evaluation,
        "baseline_notes": baseline_notes(evaluation["held_out"], evaluation["train_photos"]),
        "error_unit": "mean squared error per image in [0, 1] pixel space",
        "labels": labels,
        "train_photo_labels": train_labels,
        "files": {"figure": figure.name, "inverse_chain": "inverse" if save_chain else None},
        "timing": {"load_seconds": round(load_seconds, 2), "total_seconds": None},
        "host": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
    report["timing"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    say(summary(report))
    say(f"wrote {out / 'reconstructions.png'}, {out / 'report.json'}, {out / 'report.md'}")
    return report
