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


def default_model() -> str:
    """The model the demo runs when none is named: the first registered family whose pretrained
    weights load offline, as it declares (``Family(offline_pretrained=True)``; modinv's: MobileNetV2)."""
    from modinv.models.registry import families

    for family in families().values():
        if family.offline_pretrained and not family.is_prefix:
            return family.name
    raise ModinvError("no registered model family declares pretrained weights that load offline "
                      "(Family(offline_pretrained=True)), so the demo needs a model name")


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


def _train(net, chain, source, out: Path, settings: dict[str, Any], say: Callable[[str], None],
           budget_s: float) -> dict[str, Any]:
    """Train ``chain`` on ``source`` through :func:`modinv.training.train` until its time budget or
    step limit; Ctrl-C after the first step ends training there (the components keep what they
    learned; the reports are written)."""
    from modinv.training import train

    progress = _Progress(say, budget_s)
    trainer = train(net, source, out, settings=settings, chain=chain, progress=False, on_record=progress).trainer
    if trainer.stop_reason == "interrupt":
        say(f"  interrupted after step {trainer.step}; writing the reports")
    say(f"trained {trainer.step} steps in {trainer.seconds:.0f} s "
        f"({trainer.seconds / max(trainer.step, 1):.2f} s/step, stopped by {trainer.stop_reason})")
    history = progress.history
    epochs = trainer.epoch + (trainer.batch_in_epoch > 0)  # epochs begun
    return {"steps": trainer.step, "epochs": epochs, "seconds": trainer.seconds,
            "seconds_per_step": trainer.seconds / max(trainer.step, 1), "stopped_by": trainer.stop_reason,
            "final_loss": history[-1]["loss"] if history else {}, "history": history,
            "learning_rates": dict(trainer.lrs)}


def _load_model(model: str, weights: str, seed: int, dev, input_size: tuple[int, int] | None,
                say: Callable[[str], None]) -> tuple[Any, bool, str]:
    """``(model, whether its weights are random, the sentence saying which weights it has)``."""
    from modinv.models.registry import load_model

    say(f"loading {model} ({weights} weights) on {dev}")
    net = load_model(model, weights=weights, seed=seed, device=dev,
                     **({"input_size": tuple(input_size)} if input_size else {}))
    is_random, statement = weights_statement(net.name, str(weights), seed, net.meta.weights_note)
    if is_random:
        say("NOTE: " + statement)
    return net, is_random, statement


def _check_options(minutes: float, steps: int | None, batch_size: int) -> None:
    if not (minutes > 0 and math.isfinite(minutes)):
        raise ModinvError(f"minutes must be a positive number, got {minutes}")
    if steps is not None and steps < 1:
        raise ModinvError(f"steps must be at least 1, got {steps}")
    if batch_size < 2:
        raise ModinvError(f"batch size must be at least 2 (the components use BatchNorm), got {batch_size}")


def _training_settings(net, chain, batch_size: int, steps: int | None, budget_s: float, seed: int, amp: str,
                       lr: dict[str, float] | None, lr_scale: float) -> dict[str, Any]:
    """The demo's TrainConfig settings: ``lr_scale`` × the default rates where ``lr`` names none."""
    from modinv.training.optim import default_learning_rate

    rates = {s: float((lr or {}).get(s, lr_scale * default_learning_rate(net, s, chain.components[s])))
             for s in chain.stages}
    # the engine's run folder (config.json, log.jsonl, best/, one final checkpoint) is OUT/training
    return dict(steps=steps, max_seconds=budget_s, batch_size=batch_size, seed=seed, lr=rates, amp=amp,
                drop_last=True, log_every=1, checkpoint_every=10**9, stop_on_interrupt=True,
                overwrite=True)  # a demo run replaces the previous one in OUT


def _evaluate(net, chain, held: list[str], train_photos: list[str], metrics, lpips_weights: str | None,
              dev) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], torch.Tensor]:
    """``(evaluation, labels of the held-out photos, labels of the training photos, held-out images)``."""
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.metrics import load_lpips

    size = tuple(net.input_size)
    held_source = open_source("samples:" + ",".join(held), size=size)
    seen_source = open_source("samples:" + ",".join(train_photos), size=size)
    lpips = load_lpips(lpips_weights, device=dev) if "lpips" in metrics else None
    evaluation = {
        key: evaluate_chain(net, chain, source, amp="off", progress=False, metrics=metrics, lpips=lpips)
        | {"photos": names}
        for key, source, names in (("held_out", held_source, held), ("train_photos", seen_source, train_photos))
    }
    images = torch.stack([held_source[i]["image"] for i in range(len(held_source))])
    train_images = torch.stack([seen_source[i]["image"] for i in range(len(seen_source))])
    return evaluation, top_labels(net, images, held), top_labels(net, train_images, train_photos), images


def _figure(net, chain, images: torch.Tensor, labels: list[dict[str, Any]], out: Path, is_random: bool) -> Path:
    """The reconstruction grid of the held-out photos, each row titled with the model's top label
    (only for real weights: a random network's class labels mean nothing)."""
    from modinv.analysis.reconstruct import reconstruction_figure

    row_titles = [
        f"{lab['photo']}\n{lab['label']} {lab['probability']:.0%}" if lab["label"] is not None and not is_random
        else lab["photo"] for lab in labels
    ]
    return reconstruction_figure(net, chain, images, out / "reconstructions.png", row_titles=row_titles)


def run_demo(
    out: str | Path = "outputs/demo",
    minutes: float = DEFAULT_MINUTES,
    model: str | None = None,
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
    ``model``: a model name (None: :func:`default_model`, a real network whose weights load offline).

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
    from modinv.inverse.chain import InverseChain
    from modinv.metrics import parse_metrics
    from modinv.runtime import amp_dtype, resolve_device

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    _check_options(minutes, steps, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_photos, held = split_photos(held_out, photos)
    metrics = parse_metrics(metrics)
    dev = resolve_device(device)
    net, is_random, statement = _load_model(model or default_model(), weights, seed, dev, input_size, say)
    chain = InverseChain.build(net, arch=arch, seed=seed)
    crops = max(1, math.ceil(batch_size / len(train_photos)))
    train_source = DecodedSamples(train_photos * crops, size=tuple(net.input_size), augment=True, seed=seed,
                                   spec="samples:" + ",".join(train_photos))
    budget = minutes * 60.0
    settings = _training_settings(net, chain, batch_size, steps, budget, seed, amp, lr, lr_scale)
    precision = "bf16 autocast" if amp_dtype(dev, amp) is not None else "float32"
    load_seconds = time.perf_counter() - t0
    say(f"training {', '.join(s + '⁻¹' for s in chain.stages)} ({arch} arch, {_parameters(chain):,} "
        f"parameters) on {len(train_photos)} photos ({', '.join(train_photos)}), random crops + flips, batch "
        f"{batch_size}, {precision}; budget {budget:.0f} s" + (f" or {steps} steps" if steps else ""))
    training = _train(net, chain, train_source, out / "training", settings, say, budget)
    chain.eval()

    evaluation, labels, train_labels, images = _evaluate(net, chain, held, train_photos, metrics, lpips_weights, dev)
    figure = _figure(net, chain, images, labels, out, is_random)
    if save_chain:
        _save_chain(chain, out / "inverse", training, batch_size, seed, train_photos, evaluation)
    report = _report(net, chain, str(weights), seed, statement, is_random, train_photos, held, crops, training,
                     dict(minutes_budget=minutes, steps_limit=steps, batch_size=batch_size, precision=precision,
                          device=str(dev)),
                     evaluation, labels, train_labels,
                     files={"figure": figure.name, "inverse_chain": "inverse" if save_chain else None},
                     load_seconds=load_seconds)
    report["timing"]["total_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    say(summary(report))
    say(f"wrote {out / 'reconstructions.png'}, {out / 'report.json'}, {out / 'report.md'}")
    return report


def _save_chain(chain, folder: Path, training: dict[str, Any], batch_size: int, seed: int,
                train_photos: list[str], evaluation: dict[str, Any]) -> None:
    """The trained chain, with how it was trained and its held-out MSE per stage."""
    chain.save(folder, training={"steps": training["steps"], "seconds": round(training["seconds"], 1),
                                 "batch_size": batch_size, "seed": seed,
                                 "data": "samples:" + ",".join(train_photos) + " (augmented)"},
               metrics={s: {"held_out_mse": evaluation["held_out"]["stages"][s]["mse"]} for s in chain.stages})


def _parameters(chain) -> int:
    return sum(p.numel() for s in chain.stages for p in chain.components[s].parameters())


def _report(net, chain, weights: str, seed: int, statement: str, is_random: bool, train_photos: list[str],
            held: list[str], crops: int, training: dict[str, Any], run: dict[str, Any], evaluation: dict[str, Any],
            labels: list, train_labels: list, *, files: dict[str, Any], load_seconds: float) -> dict[str, Any]:
    """The demo's report (``report.json``); ``run``: the budget, limit, batch, precision and device."""
    return {
        "model": net.name,
        "weights": weights,
        "weights_are_random": is_random,
        "weights_statement": statement,
        "arch": chain.arch,
        "stages": list(chain.stages),
        "input_size": list(net.input_size),
        "inverse_parameters": {s: sum(p.numel() for p in chain.components[s].parameters()) for s in chain.stages},
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
            "minutes_budget": run["minutes_budget"],
            "steps_limit": run["steps_limit"],
            "steps": training["steps"],
            "epochs": training["epochs"],
            "batch_size": run["batch_size"],
            "seconds": round(training["seconds"], 2),
            "seconds_per_step": round(training["seconds_per_step"], 4),
            "stopped_by": training["stopped_by"],
            "learning_rates": training["learning_rates"],
            "precision": run["precision"],
            "device": run["device"],
            "seed": seed,
            "final_loss": training["final_loss"],
            "loss_history": training["history"],
        },
        "evaluation": evaluation,
        "baseline_notes": baseline_notes(evaluation["held_out"], evaluation["train_photos"]),
        "error_unit": "mean squared error per image in [0, 1] pixel space",
        "labels": labels,
        "train_photo_labels": train_labels,
        "files": files,
        "timing": {"load_seconds": round(load_seconds, 2), "total_seconds": None},
        "host": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    }
