"""Task metrics (COCO box AP, top-1), the eval-task command and parameter counts of the baselines.

(These test modinv.analysis.task and the eval-task/params commands; they stay here, beside the
fine-tuning tests they came with, until tests/analysis and tests/cli take them.)
"""

from __future__ import annotations

import json

import pytest
import torch

from modinv.analysis.task import classification_top1, detection_ap, detr_predictions
from modinv.cli import main
from modinv.data import open_source
from modinv.models.base import Trace
from modinv.models.detr import postprocess
from modinv.training.set_loss import detr_targets

pytestmark = pytest.mark.usefixtures("one_thread")  # root conftest: one intra-op thread for these small passes
SMALL = (32, 32)
NO_OBJECT = 91


class _FakeDetr:
    """Answers with the ground truth of each image (optionally shifted) as DETR-style outputs."""

    name, device = "detr-r50", torch.device("cpu")

    def __init__(self, source, shift=0.0):
        self.input_size = source.size
        self.items = [source[i] for i in range(len(source))]
        self.shift = shift

    def trace(self, images):
        return Trace({"img": images})

    def output(self, trace):
        images = trace["img"]
        logits = torch.full((images.shape[0], 100, NO_OBJECT + 1), -10.0)
        logits[..., NO_OBJECT] = 10.0
        boxes = torch.full((images.shape[0], 100, 4), 0.1)
        for b, image in enumerate(images):
            item = next((it for it in self.items if torch.equal(it["image"], image)), None)
            if item is None:  # an image it does not know: nothing detected
                continue
            (target,) = detr_targets([item["boxes"]], [item["labels"]], self.input_size)
            n = len(target["labels"])
            logits[b, torch.arange(n), target["labels"]] = 10.0
            logits[b, :n, NO_OBJECT] = -10.0
            boxes[b, :n] = target["boxes"] + torch.tensor([self.shift, 0.0, 0.0, 0.0])
        return {"logits": logits, "pred_boxes": boxes}

    def detections(self, trace, sizes):
        """The role a detector declares: DETR's own post-processing of these outputs."""
        out = self.output(trace)
        return postprocess(out["logits"], out["pred_boxes"], sizes)


def test_detection_ap_on_constructed_predictions(tiny_coco):
    size = (64, 96)
    source = open_source(f"coco:{tiny_coco}", size=size, masks=False)
    exact = detection_ap(_FakeDetr(source), source, batch_size=2)
    assert exact["n_images"] == 3
    assert exact["AP"] == pytest.approx(1.0) and exact["AP50"] == pytest.approx(1.0)
    shifted = detection_ap(_FakeDetr(source, shift=0.08), source, batch_size=2)
    assert shifted["AP"] < 0.9 * exact["AP"]
    far = detection_ap(_FakeDetr(source, shift=0.6), source)
    assert far["AP"] == pytest.approx(0.0)
    # the boxes AP scores are in original pixels: detr_predictions scales to the sizes given
    (pred,) = detr_predictions(_FakeDetr(source), source[0]["image"][None], sizes=torch.tensor([[512, 512]]))
    ann = source.coco.loadAnns(source.coco.getAnnIds(imgIds=[1], iscrowd=False))[0]
    x, y, w, h = ann["bbox"]
    assert torch.allclose(pred["boxes"][0], torch.tensor([x, y, x + w, y + h]), atol=0.05)
    # the transform is applied before the model: blank images, nothing detected
    assert detection_ap(_FakeDetr(source), source, transform=torch.zeros_like)["AP"] == 0.0


class _FakeClassifier:
    name, device = "fake", torch.device("cpu")

    def __init__(self, source, wrong=()):
        self.input_size = source.size
        self.items = [source[i] for i in range(len(source))]
        self.wrong = set(wrong)

    def trace(self, images):
        return Trace({"img": images})

    def output(self, trace):
        logits = torch.zeros(trace["img"].shape[0], 1000)
        for b, image in enumerate(trace["img"]):
            index = next(i for i, it in enumerate(self.items) if torch.equal(it["image"], image))
            label = self.items[index]["label"]
            logits[b, (label + 1) % 1000 if index in self.wrong else label] = 1.0
        return logits


def test_classification_top1_on_a_constructed_case(image_folder):
    source = open_source(f"imagenet:{image_folder}", size=SMALL)
    assert classification_top1(_FakeClassifier(source), source, batch_size=4) == {"top1": 1.0, "n": 6, "correct": 6}
    assert classification_top1(_FakeClassifier(source, wrong=(0, 3)), source)["top1"] == pytest.approx(4 / 6)
    assert classification_top1(_FakeClassifier(source), source, limit=5)["n"] == 5


def test_eval_task_cli(tmp_path, image_folder, tiny_coco, capsys):
    out = tmp_path / "top1.json"
    rc = main(["eval-task", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
               "--data", f"imagenet:{image_folder}", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["metric"] == "top1" and result["n"] == 6 and result["label_map"] == "imagenet"
    assert main(["eval-task", "--model", "mobilenet-v2", "--data", f"coco:{tiny_coco}", "--out", str(out)]) == 2
    assert main(["eval-task", "--model", "detr-r50", "--data", f"imagenet:{image_folder}", "--out", str(out)]) == 2
    assert "COCO box AP" in capsys.readouterr().err


# -- parameter counts ----------------------------------------------------------------------------

def test_params_json_is_consistent(tmp_path):
    out = tmp_path / "params.json"
    assert main(["params", "--model", "mobilenet-v2", "--input-size", "32", "32", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    stages = r["stages"]
    assert stages == ["s4", "s8", "s16", "s32"]
    modular = r["modular"]
    assert modular["total"] == sum(modular[s] for s in stages)
    for i, s in enumerate(stages):  # classic j->img = the components j..1 it was built from
        assert r["classic_measured"][s] == sum(modular[t] for t in stages[: i + 1]) == r["full_path_sum"][s]
    assert r["classic_measured"]["total"] == sum(r["classic_measured"][s] for s in stages) == r["full_path_sum"]["total"]
    assert r["paper_estimate"] == {"p": modular["total"], "n": 4, "modular": modular["total"],
                                   "classic": 5 * modular["total"] / 2}
