"""Baselines and fine-tuning: DETR's set loss, classic inversion, λ fine-tuning, task metrics, parameter counts.

CPU-sized: random weights, tiny inputs, a few steps. Fine-tuning tests use MobileNet-V2 at 32×32
(a classifier whose classic inverse has ~0.1 M parameters) unless the test is about a specific model.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import modinv
from modinv.analysis.task import classification_top1, detection_ap, detr_predictions
from modinv.cli import main
from modinv.data import make_loader, open_source
from modinv.data.synthetic import make_image_folder, make_tiny_coco
from modinv.models.base import Trace
from modinv.training import finetune as ft
from modinv.analysis.evaluate import evaluate_chain
from modinv.training.classic import build_classic_chain, classic_path
from modinv.training.finetune import FinetuneConfig, FinetuneTrainer, scale_gradient
from modinv.training.set_loss import detr_targets, hungarian_match, set_loss

SMALL_DETR = (64, 96)
SMALL = (32, 32)
NO_OBJECT = 91


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads run these small
    passes many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return make_tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("inet"), per_class=2, size=SMALL)


def _config(**kw):
    base = dict(steps=2, batch_size=6, val_every=1000, checkpoint_every=1000, amp="off")
    return FinetuneConfig(**(base | kw))


# -- DETR's set loss --------------------------------------------------------------------------------

def test_hungarian_matching_on_a_hand_made_case():
    """Two targets, three queries: the optimum is not the greedy choice (query 0 fits target 0 best,
    but query 0 is the only good fit of target 1, so target 0 must take query 2)."""
    def cxcywh(x0, y0, x1, y1):
        return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]

    targets = [{"labels": torch.tensor([5, 7]),
                "boxes": torch.tensor([cxcywh(0.1, 0.1, 0.3, 0.3), cxcywh(0.12, 0.12, 0.32, 0.32)])}]
    boxes = torch.tensor([[cxcywh(0.1, 0.1, 0.3, 0.3), cxcywh(0.6, 0.6, 0.9, 0.9), cxcywh(0.11, 0.1, 0.31, 0.3)]])
    logits = torch.full((1, 3, NO_OBJECT + 1), -5.0)
    logits[0, 0, 7] = 5.0  # query 0 says class 7 (target 1's)
    logits[0, 1, 5] = 5.0  # query 1 says class 5 but is far away
    logits[0, 2, 5] = 5.0  # query 2 says class 5 and sits on target 0
    (rows, cols), = hungarian_match(logits, boxes, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    losses = set_loss(logits, boxes, targets)
    # unmatched query 1 targets "no object"; matched ones their labels: the CE is the weighted mean
    weights = torch.tensor([1.0, 0.1, 1.0])
    ce = torch.stack([F.cross_entropy(logits[0, q], torch.tensor(c)) for q, c in ((0, 7), (1, NO_OBJECT), (2, 5))])
    assert torch.allclose(losses["loss_ce"], (weights * ce).sum() / weights.sum())
    l1 = (boxes[0, 0] - targets[0]["boxes"][1]).abs().sum() + (boxes[0, 2] - targets[0]["boxes"][0]).abs().sum()
    assert torch.allclose(losses["loss_bbox"], l1 / 2)
    total = losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert torch.allclose(losses["loss"], total)
    # an image without objects: nothing matched, every query targets "no object"
    empty = set_loss(logits, boxes, [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    assert empty["loss_bbox"] == 0 and empty["loss_giou"] == 0


def test_detr_targets_are_normalised_cxcywh():
    (t,) = detr_targets([torch.tensor([[10.0, 20.0, 30.0, 60.0]])], [torch.tensor([17])], image_size=(80, 40))
    assert t["labels"].tolist() == [17]
    assert torch.allclose(t["boxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))


def test_set_loss_decreases_on_tiny_coco(tiny_coco):
    """A few Adam steps on all of DETR's weights lower its set loss on COCO-format annotations (the
    targets and loss the fine-tuning uses)."""
    model = modinv.load_model("detr-r50", weights="random", input_size=SMALL_DETR)
    batch = next(iter(make_loader(open_source(f"coco:{tiny_coco}", size=SMALL_DETR, masks=False), batch_size=3)))
    targets = ft.batch_targets(model, batch)
    assert [t["labels"].tolist() for t in targets] == [[1], [17], [47, 50]]
    model.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        loss = ft.task_loss(model, model.output(model.trace(batch["image"])), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


# -- classic inversion ------------------------------------------------------------------------------

def test_classic_training_lowers_image_mse_and_its_chain_loads(tmp_path):
    out = tmp_path / "classic"
    rc = main(["train", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
               "--classic", "s16", "--data", "samples", "--val-data", "samples", "--out", str(out),
               "--steps", "12", "--batch", "4", "--val-every", "6", "--checkpoint-every", "6", "--no-progress",
               "--amp", "off"])
    assert rc == 0
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["training"] == "classic" and manifest["classic_stage"] == "s16"
    chain = modinv.InverseChain.load(out / "best", model)
    assert list(chain.stages) == ["s4", "s8", "s16"] == classic_path(model, "s16")[::-1]
    assert chain.component_meta["s16"]["training"]["method"] == "classic"
    assert chain.end_to_end_stage == "s16"  # evaluate/reconstruct then report s16 only
    result = evaluate_chain(model, chain, open_source("samples", size=SMALL), progress=False)
    assert list(result["stages"]) == ["s16"]
    samples = open_source("samples", size=SMALL)
    images = torch.stack([samples[i]["image"] for i in range(len(samples))])
    fresh = build_classic_chain(model, "s16", seed=0).eval()  # the run's initial chain (same seed)
    with torch.no_grad():
        trace = model.trace(images)
        before = F.mse_loss(fresh.reconstruct(trace, "s16"), images)
        after = F.mse_loss(chain.reconstruct(trace, "s16"), images)
    assert after < 0.9 * before, (float(before), float(after))  # measured 0.064 -> 0.052 (untrained: 1.0×)
    validations = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                   if r.get("event") == "validation"]
    assert float(after) == pytest.approx(min(r["val_loss"]["s16"] for r in validations), rel=1e-5)


# -- λ fine-tuning ----------------------------------------------------------------------------------

def test_scale_gradient_is_exact():
    x = torch.randn(5, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((5,), 0.25))


def test_lambda_zero_keeps_theta_bit_identical(tmp_path, folder):
    model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chain = build_classic_chain(model, "s8")
    phi_before = {k: v.clone() for k, v in chain.state_dict().items()}
    source = open_source(f"imagenet:{folder}", size=SMALL)
    trainer = FinetuneTrainer(model, chain, source, source, tmp_path, _config(stage="s8", lam=0.0, val_every=2))
    trainer.fit(progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(phi_before[k], v) for k, v in chain.state_dict().items())  # φ trained
    reloaded = modinv.load_model("mobilenet-v2", weights=str(tmp_path / "best" / "forward.safetensors"),
                                 input_size=SMALL)
    assert all(torch.equal(before[k], v) for k, v in reloaded.state_dict().items())
    manifest = json.loads((tmp_path / "best" / "manifest.json").read_text())
    assert manifest["training"] == "finetune" and manifest["lambda"] == 0.0


class _Relabelled(torch.utils.data.Dataset):
    """The same images with other labels (or none)."""

    def __init__(self, source, shift):
        self.source, self.shift, self.size = source, shift, source.size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        item = dict(self.source[i])
        if self.shift is None:
            item.pop("label")
        else:
            item["label"] = (item["label"] + self.shift) % 1000
        return item


def test_lambda_one_ignores_the_task_loss(tmp_path, folder, monkeypatch):
    source = open_source(f"imagenet:{folder}", size=SMALL)

    def run(data, name):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s8")
        FinetuneTrainer(model, chain, data, None, tmp_path / name,
                        _config(stage="s8", lam=1.0, theta_lr=1e-3)).fit(progress=False)
        return model.state_dict(), chain.state_dict()

    theta, phi = run(source, "true")
    monkeypatch.setattr(ft, "task_loss", lambda *a, **k: pytest.fail("the task loss was computed at λ = 1"))
    for name, shift in (("shifted", 7), ("none", None)):
        theta2, phi2 = run(_Relabelled(source, shift), name)
        assert all(torch.equal(theta[k], v) for k, v in theta2.items())
        assert all(torch.equal(phi[k], v) for k, v in phi2.items())
    start = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in theta.items())  # θ did train, on the MSE


def test_finetune_resumes_exactly(tmp_path, folder):
    """4 steps equal 2 steps resumed for 2 more: θ and its optimiser travel in the checkpoints, and
    the dropout masks (forward mode "dropout") come from the seeded, checkpointed generator."""
    source = open_source(f"imagenet:{folder}", size=SMALL)

    def run(out, steps, resume=False):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s16")
        config = _config(stage="s16", lam=0.5, steps=steps, batch_size=4, checkpoint_every=2, theta_lr=1e-3)
        FinetuneTrainer(model, chain, source, None, out, config).fit(resume=resume, progress=False)
        return model.state_dict(), chain.state_dict()

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    for a, b in zip(straight, resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_lambda_weights_the_gradients_as_eq3(tmp_path, folder):
    """θ gets λ·∂MSE + (1-λ)·∂L_OBJ, φ gets ∂MSE at weight 1."""
    source = open_source(f"imagenet:{folder}", size=SMALL)
    batch = next(iter(make_loader(source, batch_size=6)))
    grads = {}
    for lam in (0.25, 1.0):
        model = modinv.load_model("mobilenet-v2", weights="random", input_size=SMALL)
        chain = build_classic_chain(model, "s8")
        trainer = FinetuneTrainer(model, chain, source, None, tmp_path / str(lam),
                                  _config(stage="s8", lam=lam, forward_mode="eval"))
        model.eval()
        trace = trainer.forward_trace(batch["image"], grad=True)
        targets = ft.batch_targets(model, batch)
        losses = trainer.losses(trace, targets if lam < 1 else None)
        losses["total"].backward()
        first = next(model.parameters())
        grads[lam] = (first.grad.clone(), next(chain.parameters()).grad.clone())
        if lam < 1:  # the task part alone
            model.zero_grad()
            ft.task_loss(model, model.output(model.trace(batch["image"])), targets).backward()
            task_grad = first.grad.clone()
    theta_mse = grads[1.0][0]
    assert torch.allclose(grads[0.25][0], 0.25 * theta_mse + 0.75 * task_grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[0.25][1], grads[1.0][1])  # φ: same MSE gradient whatever λ


def test_no_self_attention_vit_finetunes_with_cross_entropy(tmp_path, folder):
    """A few steps of the finetune command change vit-b16-noselfattn's weights and lower its CE.

    Stage bb keeps the test light (its classic inverse has 0.9 M parameters; from enc it would add
    the 85 M of enc⁻¹); the loss, λ handling and weight saving are the same for every stage."""
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", "vit-b16-noselfattn", "--weights", "random", "--input-size", "32", "32",
               "--lam", "0.5", "--stage", "bb", "--data", f"imagenet:{folder}", "--val-fraction", "0",
               "--out", str(out), "--steps", "3", "--batch", "6", "--theta-lr", "1e-4", "--no-progress",
               "--amp", "off"])
    assert rc == 0
    source = open_source(f"imagenet:{folder}", size=SMALL, label_map="imagenet")
    batch = next(iter(make_loader(source, batch_size=6)))

    def cross_entropy(model):
        with torch.no_grad():
            return float(F.cross_entropy(model.output(model.trace(batch["image"])), batch["label"]))

    start = modinv.load_model("vit-b16-noselfattn", weights="random", input_size=SMALL)
    tuned = modinv.load_model("vit-b16-noselfattn", weights=str(out / "best" / "forward.safetensors"),
                              input_size=SMALL)
    assert not tuned.self_attention
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) > 100
    assert cross_entropy(tuned) < 0.8 * cross_entropy(start)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lam"] == 0.5 and config["task"] == "classification"
    assert config["source_options"] == {"label_map": "imagenet"}


# -- task metrics ---------------------------------------------------------------------------------

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


def test_classification_top1_on_a_constructed_case(folder):
    source = open_source(f"imagenet:{folder}", size=SMALL)
    assert classification_top1(_FakeClassifier(source), source, batch_size=4) == {"top1": 1.0, "n": 6, "correct": 6}
    assert classification_top1(_FakeClassifier(source, wrong=(0, 3)), source)["top1"] == pytest.approx(4 / 6)
    assert classification_top1(_FakeClassifier(source), source, limit=5)["n"] == 5


def test_eval_task_cli(tmp_path, folder, tiny_coco, capsys):
    out = tmp_path / "top1.json"
    rc = main(["eval-task", "--model", "mobilenet-v2", "--weights", "random", "--input-size", "32", "32",
               "--data", f"imagenet:{folder}", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["metric"] == "top1" and result["n"] == 6 and result["label_map"] == "imagenet"
    assert main(["eval-task", "--model", "mobilenet-v2", "--data", f"coco:{tiny_coco}", "--out", str(out)]) == 2
    assert main(["eval-task", "--model", "detr-r50", "--data", f"imagenet:{folder}", "--out", str(out)]) == 2
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
