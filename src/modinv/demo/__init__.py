"""The offline demo: modular inverse components for a real pretrained network, in minutes on a CPU.

    result = run_demo("outputs/demo", minutes=3)          # what `make demo` runs
    result["evaluation"]["held_out"]["stages"]["s4"]     # {"mse", "ci95", "n", "std", ...}
    result["evaluation"]["held_out"]["metrics"]["ssim"]  # {"stages": {...}, "mean_image_baseline": {...}}

What it does (``modinv demo``):

1. loads the model (default: torchvision's MobileNetV2 with its official ImageNet weights, found
   offline and SHA-checked by :mod:`modinv.models.mobilenet`) and builds an inverse chain
   (``arch="auto"``: one small upsampling component per stage ``s4 s8 s16 s32``);
2. splits every freely licensed photo that scikit-image and matplotlib ship (16, see
   :mod:`modinv.demo.photos`) into *training* photos and *held-out* photos (default held out:
   ``chelsea``, ``coffee``, ``camera``: a cat, a cup of coffee and a grayscale photo of a
   cameraman; the 13 others train). The held-out photos are never seen in training; they are the
   ones shown, labelled and evaluated, so the figure shows how the components generalise rather
   than what they memorised;
3. trains every component with the training engine (:class:`~modinv.training.modular.ModularTrainer`,
   Eq. 1: one frozen forward pass per batch feeds all components) on random crops and flips of the
   training photos (every epoch a new crop of every training photo: a few photos give thousands
   of different views), until the engine's time budget (``minutes``) is spent or
   ``steps`` are done; the engine's run folder is ``out/training`` (``config.json``, ``log.jsonl``);
4. writes to ``out``: ``reconstructions.png`` (each held-out photo, then its reconstruction from
   every stage), ``report.json`` and ``report.md`` (per stage every image metric of
   :func:`~modinv.analysis.evaluate.evaluate_chain` — MSE in [0, 1] pixel space, PSNR, SSIM, LPIPS
   where its weights are found — with 95% CIs, on the held-out photos and on the training photos,
   against the mean-image baseline, one line per stage that does not beat the baseline saying why,
   the model's top-1 ImageNet label per shown photo, training time and steps, model and weights,
   and a plain statement when the weights are random) and ``inverse/`` (the trained chain, usable with
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

from modinv.demo.photos import DEFAULT_HELD_OUT, DEFAULT_PHOTOS, DecodedSamples, split_photos
from modinv.demo.report import (baseline_notes, class_names, report_markdown, summary, top_labels,
                                weights_statement)
from modinv.demo.run import DEFAULT_BATCH, DEFAULT_MINUTES, DEFAULT_WEIGHTS, LR_SCALE, default_model, run_demo

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_HELD_OUT",
    "DEFAULT_MINUTES",
    "DEFAULT_PHOTOS",
    "DEFAULT_WEIGHTS",
    "LR_SCALE",
    "DecodedSamples",
    "baseline_notes",
    "class_names",
    "default_model",
    "report_markdown",
    "run_demo",
    "split_photos",
    "summary",
    "top_labels",
    "weights_statement",
]
