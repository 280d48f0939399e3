"""The detection-error analysis (Sec. 4.6): the AUROC of missed objects, COCO-style matching, box
discrepancy, the subcommand. Models and slim chains come from tests/analysis/conftest.py."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy import stats

from modinv.errors import ModinvError
from modinv.inverse.chain import InverseChain
from modinv.metrics import auroc_ci
from modinv.models.base import ModelMeta, Trace
from modinv.models.detr import postprocess

# the module (modinv.analysis.errors as an attribute is the analysis function of the same name)
err = importlib.import_module("modinv.analysis.errors")

DETR_SIZE = (64, 96)


def test_auroc() -> None:
    """The analysis's AUROC (missed = positive; modinv.metrics.auroc underneath) against hand counts and scipy."""
    auroc = err.missed_auroc
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    pos, neg = [0.8, 0.4, 0.6], [0.5, 0.4, 0.1]  # pairs won: 3 + (1 + 0.5) + 3 = 7.5 of 9
    assert auroc(pos, neg) == pytest.approx(7.5 / 9)
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert auroc(pos, neg) == pytest.approx(u / 9)
    rng = np.random.default_rng(0)
    p, q = rng.integers(0, 5, 40), rng.integers(1, 6, 30)  # many ties
    assert auroc(p, q) == pytest.approx(stats.mannwhitneyu(p, q).statistic / (40 * 30))
    assert math.isnan(auroc([], [1.0])) and auroc([1.0, math.nan], [0.0]) == 1.0
    lo, hi = auroc_ci(0.8, 20, 30)
    assert 0 <= lo < 0.8 < hi <= 1


def test_matching_hand_made() -> None:
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    gt_labels = torch.tensor([1, 1, 2])
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)
    labels = torch.tensor([1, 1, 3, 2])
    scores = torch.tensor([0.90, 0.95, 0.99, 0.80])
    m = err.match_objects(gt, gt_labels, boxes, labels, scores)
    # pred 1 (0.95) takes GT 0 first; pred 0 finds GT 0 taken and GT 1 at IoU 0; pred 2 has the wrong
    # class; pred 3 overlaps GT 2 at IoU 1/3 < 0.5
    assert m["found"].tolist() == [True, False, False]
    assert m["prediction"].tolist() == [1, -1, -1] and m["iou"][0] == pytest.approx(0.9)
    boxes[3] = torch.tensor([0, 0, 10, 20])  # IoU exactly 0.5 matches (COCO: >=)
    m = err.match_objects(gt, gt_labels, boxes, labels, scores)
    assert m["found"].tolist() == [True, False, True] and m["prediction"].tolist() == [1, -1, 3]
    empty = err.match_objects(gt, gt_labels, boxes[:0], labels[:0], scores[:0])
    assert not empty["found"].any()


def test_detections_and_box_discrepancy(detr) -> None:
    pred = {"scores": torch.tensor([0.2, 0.9, 0.75, 0.7]), "labels": torch.tensor([1, 2, 3, 4]),
            "boxes": torch.arange(16.0).view(4, 4)}
    kept = err.filter_detections(pred, 0.7)  # score > 0.7, by descending score
    assert kept["labels"].tolist() == [2, 3] and torch.equal(kept["boxes"], pred["boxes"][[1, 2]])
    with torch.no_grad():
        dets = err.detections(detr, detr.trace(torch.rand(1, 3, *DETR_SIZE)), threshold=0.0)
    assert len(dets) == 1 and dets[0]["boxes"].shape == (100, 4) and (dets[0]["scores"].diff() <= 0).all()
    image, recon = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    recon[:, 0:4, 0:2] = 1.0
    inside, relative, whole = err.box_discrepancy(image, recon, torch.tensor([[0.0, 0.0, 2.0, 4.0], [4, 4, 8, 8]]))
    assert whole == pytest.approx(8 / 64)
    assert inside.tolist() == pytest.approx([1.0, 0.0]) and relative.tolist() == pytest.approx([8.0, 0.0])


def test_cli_errors(cli, chains, coco, common_args, read_outputs, tmp_path) -> None:
    out = tmp_path / "errors"
    cli("errors", *common_args("detr-r50", DETR_SIZE, [chains["detr"]], f"coco:{coco}", out), "--threshold", "0.5")
    result = read_outputs(out, "errors")
    assert set(result["stages"]) == {"bb", "enc", "dec", "pred"}
    for r in result["stages"].values():
        assert {"auroc", "auroc_ci95", "auroc_raw", "n_missed", "n_found"} <= set(r)
        assert r["n_missed"] + r["n_found"] == result["n_objects"] == 2  # a person and a cat
    assert result["threshold"] == 0.5 and result["iou_threshold"] == 0.5 and "small_box" in result["baselines"]
    assert result["precision"] == "float32"
    obj = result["objects"][0]
    assert {"image", "category", "box", "found", "discrepancy", "relative"} <= set(obj)
    assert obj["category"] == "person" and set(obj["relative"]) == {"bb", "enc", "dec", "pred"}


# -- the AUROC end to end on a constructed case ------------------------------------------------------------

H = W = 32
NO_OBJECT = 4  # classes 0..3, then DETR's "no object"
# image 0: A (found, 8×8), B (missed, 8×8), C (found, 8×16); image 1: D (missed, 8×8), E (found, 8×8)
OBJECTS = [
    [([0, 0, 8, 8], 1, True), ([16, 16, 24, 24], 1, False), ([0, 16, 8, 32], 2, True)],
    [([8, 8, 16, 16], 1, False), ([20, 0, 28, 8], 3, True)],
]


class _KnownDetector:
    """DETR's output interface, detecting exactly the objects marked found (score ≈ 1, exact box)."""

    name, weights, device, input_size = "known-detector", "none", torch.device("cpu"), (H, W)
    stages = ("good", "swap", "all")
    meta = ModelMeta(task="detection", class_names=("zero", "one", "two", "three", "N/A"))

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.traced = 0

    def trace(self, images: torch.Tensor) -> Trace:
        self.traced += 1
        return Trace({"img": images})

    def output(self, trace: Trace) -> dict[str, torch.Tensor]:
        images = trace["img"]
        logits = torch.full((images.shape[0], 10, NO_OBJECT + 1), -10.0)
        logits[..., NO_OBJECT] = 10.0
        boxes = torch.full((images.shape[0], 10, 4), 0.5)
        for b, image in enumerate(images):
            (k,) = [k for k, known in enumerate(self.images) if torch.equal(known, image)]
            for q, (box, label, found) in enumerate(OBJECTS[k]):
                if found:
                    x0, y0, x1, y1 = box
                    logits[b, q, label], logits[b, q, NO_OBJECT] = 10.0, -10.0
                    boxes[b, q] = torch.tensor([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H])
        return {"logits": logits, "pred_boxes": boxes}

    def detections(self, trace: Trace, sizes=None) -> list[dict[str, torch.Tensor]]:
        """The role a detector declares: DETR's own post-processing of these outputs."""
        out = self.output(trace)
        return postprocess(out["logits"], out["pred_boxes"], torch.tensor([[H, W]] * out["logits"].shape[0]))


class _KnownChain:
    """Reconstructions off by 0.25 inside chosen boxes only (exact in binary: ties stay ties): "good" the
    missed objects' boxes, "swap" the found ones', "all" every box."""

    end_to_end_stage = None

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def path(self, stage: str) -> list[str]:
        return [stage]

    def reconstruct(self, trace: Trace, stage: str) -> torch.Tensor:
        out = trace["img"].clone()
        for b, image in enumerate(trace["img"]):
            (k,) = [k for k, known in enumerate(self.images) if torch.equal(known, image)]
            for (x0, y0, x1, y1), _, found in OBJECTS[k]:
                if stage == "all" or found == (stage == "swap"):
                    out[b, :, y0:y1, x0:x1] += 0.25
        return out


def test_auroc_end_to_end_on_a_constructed_case() -> None:
    images = torch.stack([torch.full((3, H, W), 0.5), torch.full((3, H, W), 0.25)])
    source = [{"image": images[k], "boxes": torch.tensor([o[0] for o in objs], dtype=torch.float32),
               "labels": torch.tensor([o[1] for o in objs]), "name": f"img{k}", "index": k, "image_id": k}
              for k, objs in enumerate(OBJECTS)]
    detector = _KnownDetector(images)
    result = err.detection_error_analysis(detector, _KnownChain(images), source, batch_size=2, progress=False)
    assert detector.traced == 1  # one frozen forward feeds the reconstructions and the detections
    assert [o["found"] for o in result.objects] == [True, False, True, False, True]
    assert (result.n_missed, result.n_found) == (2, 3)
    stages = result.stages
    # the discrepancy inside the missed objects only: every missed object outranks every found one
    assert stages["good"]["auroc"] == 1.0 and stages["good"]["auroc_raw"] == 1.0
    assert stages["swap"]["auroc"] == 0.0 and stages["swap"]["auroc_raw"] == 0.0
    # every box equally off: relative = H·W / (area of the image's boxes) = 1024/256 = 4 in image 0 (B
    # missed; A, C found) and 1024/128 = 8 in image 1 (D missed; E found). Pairs (missed, found):
    # B-A ½, B-C ½, B-E 0, D-A 1, D-C 1, D-E ½  ->  3.5 / 6; the raw discrepancy ties everywhere: ½
    assert [o["relative"]["all"] for o in result.objects] == pytest.approx([4, 4, 4, 8, 8])
    assert stages["all"]["auroc"] == pytest.approx(3.5 / 6) and stages["all"]["auroc_raw"] == 0.5
    # baseline -area: missed 64, 64 vs found 64, 128, 64 -> each missed wins 1 and ties 2: (2 + 2) / 6
    assert result.baselines["small_box"]["auroc"] == pytest.approx(4 / 6)
    assert result.objects[2]["category"] == "two" and result.precision == "float32"


def test_errors_needs_boxes_and_a_detector(detr, vit, chains) -> None:
    from modinv.data import open_source

    chain = InverseChain.load(chains["detr"], detr)
    with pytest.raises(ModinvError, match="COCO"):
        err.detection_error_analysis(detr, chain, open_source("samples", size=DETR_SIZE), progress=False)
    vit_chain = InverseChain.load(chains["vit"], vit)
    with pytest.raises(ModinvError, match="needs a detector"):
        err.detection_error_analysis(vit, vit_chain, open_source("samples", size=vit.input_size), progress=False)
