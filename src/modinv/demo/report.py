"""What the demo says: the weights statement, the model's labels, the terminal summary and
``report.md`` (every image metric per stage with its 95% CI, on the held-out and the training
photos, against the mean-image baseline)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from modinv.analysis.evaluate import evaluation_lines, metric_text

# what each metric means, for report.md
METRIC_NOTES = {
    "mse": "MSE: mean squared pixel error in [0, 1] pixel space (0 = perfect)",
    "psnr": "PSNR: 10·log10(1/MSE) per image in dB, higher is better",
    "ssim": "SSIM: structural similarity (11×11 Gaussian window), 1 = identical",
    "lpips": "LPIPS: learned perceptual distance (AlexNet), 0 = identical",
}


def weights_statement(model_name: str, weights: str, seed: int, note: str | None = None) -> tuple[bool, str]:
    """``(is_random, one sentence)`` about the model's weights, for the report; ``note``: what its
    pretrained weights are, as the model declares it (``model.meta.weights_note``)."""
    if weights == "random":
        return True, (
            f"The {model_name} weights are RANDOM (seeded initialisation, seed {seed}), not trained: the "
            "reconstructions show what an untrained network keeps, and its class labels are meaningless."
        )
    if weights == "pretrained":
        return False, f"The {model_name} weights are {note or 'its published pretrained weights'}."
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


def baseline_notes(held: Mapping[str, Any], seen: Mapping[str, Any]) -> list[str]:
    """One line per stage whose held-out MSE is not below the mean-image baseline, saying why:
    memorised (below the baseline on the training photos, not on unseen ones) or not learned yet."""
    base, seen_base = held["mean_image_baseline"]["mse"], seen["mean_image_baseline"]["mse"]
    notes = []
    for stage, r in held["stages"].items():
        if r["mse"] < base:
            continue
        trained = seen["stages"][stage]["mse"]
        why = (f"it is below its baseline on the training photos ({trained:.4f} vs {seen_base:.4f}): with "
               f"{seen['n_images']} training photos it has memorised them more than it generalises"
               if trained < seen_base else
               f"it is above its baseline on the training photos too ({trained:.4f} vs {seen_base:.4f}): "
               "it has not learned to invert this stage in the time given")
        notes.append(f"{stage}: held-out MSE {r['mse']:.4f} is not below the mean-image baseline {base:.4f}; {why}.")
    return notes


def summary(report: Mapping[str, Any]) -> str:
    """A few lines for the terminal: every metric per stage on the held-out photos, the baseline,
    the stages that do not beat it, the labels."""
    ev = report["evaluation"]["held_out"]
    lines = [f"held-out photos ({', '.join(report['data']['held_out_photos'])}), mean and 95% CI:"]
    lines += [f"  {name.upper()} not computed: {why}" for name, why in ev.get("not_computed", {}).items()]
    lines += evaluation_lines(ev, indent="  ", baseline="(baseline)")
    lines += ["  " + note for note in report.get("baseline_notes", [])]
    for lab in report["labels"]:
        if lab["label"] is not None:
            lines.append(f"  {lab['photo']}: {lab['label']} ({lab['probability']:.1%})")
    if report["weights_are_random"]:
        lines.append("  " + report["weights_statement"])
    return "\n".join(lines)


def metric_table(entry: Mapping[str, Any]) -> list[str]:
    """Markdown table of an :func:`~modinv.analysis.evaluate.evaluate_chain` result: one row per
    stage and one for the mean-image baseline, one column per computed metric."""
    per_metric = entry["metrics"]
    names = list(per_metric)
    lines = ["| reconstructed from | " + " | ".join(n.upper() + (" (dB)" if n == "psnr" else "") for n in names)
             + " |", "|---" * (len(names) + 1) + "|"]
    for stage in entry["stages"]:
        lines.append(f"| {stage} | " + " | ".join(metric_text(n, per_metric[n]["stages"][stage]) for n in names) + " |")
    lines.append("| mean image (baseline) | "
                 + " | ".join(metric_text(n, per_metric[n]["mean_image_baseline"]) for n in names) + " |")
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """The short human-readable report (``report.md``)."""
    tr, data = report["training"], report["data"]
    held, seen = report["evaluation"]["held_out"], report["evaluation"]["train_photos"]
    lines = [f"# modinv demo: {report['model']} ({report['weights']} weights)", ""]
    lines += [f"**{report['weights_statement']}**" if report["weights_are_random"] else report["weights_statement"], ""]
    lines += [
        f"Inverse components ({report['arch']} arch) for stages {', '.join(report['stages'])} were trained for "
        f"{tr['steps']} steps of {tr['batch_size']} crops ({tr['seconds']:.0f} s, {tr['seconds_per_step']:.2f} s/step, "
        f"{tr['precision']} on {tr['device']}; stopped by the {tr['stopped_by']}).",
        "",
        f"- Training photos ({len(data['train_photos'])}, {data['source']}): {', '.join(data['train_photos'])} "
        "(random crops and flips).",
        "- **Held-out photos** (never trained on; shown, labelled and evaluated): "
        f"{', '.join(data['held_out_photos'])}.",
        "",
        f"## Held-out photos (n={held['n_images']}): reconstruction quality, mean and 95% CI",
        "",
        *metric_table(held),
        "",
    ]
    lines += [f"{name.upper()} not computed: {why}" for name, why in held.get("not_computed", {}).items()]
    base = held["mean_image_baseline"]["mse"]
    ratios = ", ".join(f"{s} {r['mse'] / base:.2f}×" for s, r in held["stages"].items()) if base > 0 else "-"
    lines += [
        "",
        f"Held-out MSE relative to the mean-image baseline: {ratios}. The baseline scores each photo against the "
        "mean image of the same photos. " + "; ".join(METRIC_NOTES[n] for n in held["metrics"] if n in METRIC_NOTES)
        + ". Intervals: " + "; ".join(held["ci"]["methods"].values()) + ". With three photos they are wide; "
        "the reconstructions are in `reconstructions.png`.",
        "",
    ]
    lines += [f"- {note}" for note in report.get("baseline_notes", [])]
    lines += [
        "",
        f"## Training photos (n={seen['n_images']}), for contrast: what the components memorised",
        "",
        *metric_table(seen),
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
