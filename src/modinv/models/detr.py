"""DETR-R50 (Hugging Face ``facebook/detr-resnet-50``) as a staged model.

Stages (paper Section 3.3; B = batch, shapes at the default 480×640 input):

- ``bb``: ResNet-50 C5 map after DETR's 1×1 input projection 2048->256, flattened row-major to
  B×300×256 (a 15×20 grid).
- ``enc``: transformer-encoder output, B×300×256; the sine position embeddings enter the queries
  and keys of every layer, as in DETR.
- ``dec``: last decoder layer output after the decoder LayerNorm, B×100×256.
- ``pred``: ``cat([class logits (92, incl. no-object), boxes (4: cx, cy, w, h in [0, 1])], -1)``,
  B×100×96; :func:`split_pred` separates the two.

Every stage is computed by the wrapped ``DetrForObjectDetection``'s own submodules (backbone,
position embedding, input projection, encoder and decoder layers, decoder LayerNorm, heads), so a
trace reproduces the model's forward pass. Images enter in [0, 1]; the ``bb`` step applies the
ImageNet normalisation DETR was trained with. The pixel mask is all ones (no padding).

Context of a trace (a contract with the inverse components):
``pos`` B×300×256 sine position embeddings (token order of ``bb``), ``mask`` B×15×20 bool (True =
valid), ``grid`` (15, 20), ``image_size`` (480, 640).

Metadata (``model.meta``): task ``"detection"``; ``class_names`` one per logit index, 92 of them:
the Hugging Face config's ``id2label`` for ids 0..90 (COCO category ids, ``"N/A"`` for unused ids)
and ``"no object"`` last; ImageNet mean/std; inverse family ``"detr"`` with the paper's Adam rates.

Weights: ``"random"`` builds the hub model's architecture (timm ResNet-50 backbone, 91 labels)
under a seed; ``"pretrained"`` loads ``facebook/detr-resnet-50`` from the local cache, else from
the hub; a path is a ``save_pretrained`` directory or a state-dict file (.safetensors, or a
PyTorch file read with ``weights_only``) in either key layout transformers knows. Every weight must
fit: nothing is silently left at random.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modinv.data.coco import coco_category_names
from modinv.errors import ModinvError
from modinv.models.base import StagedModel, Trace
from modinv.models.family import Family, register_family
from modinv.models.modules import IMAGENET_MEAN, IMAGENET_STD
from modinv.models.roles import PredictionStage, TokenGrid
from modinv.models.recipes import DETR_PAPER
from modinv.models.timm_loader import check_input_size
from modinv.models.weights import guarded_download, load_state_file, seeded

if TYPE_CHECKING:  # transformers' modeling code loads on first use, not when the family is listed
    from transformers import DetrConfig, DetrForObjectDetection

NAME = "detr-r50"
HUB_ID = "facebook/detr-resnet-50"
NUM_LABELS = 91  # COCO category ids 0..90 (some unused), as in the hub config
NUM_CLASSES_WITH_NO_OBJECT = NUM_LABELS + 1
NUM_BOX_COORDS = 4
STRIDE = 32  # ResNet-50 C5 stride
DEFAULT_INPUT_SIZE = (480, 640)
NO_OBJECT = "no object"
FROZEN_NORM_EPS = 1e-5  # the epsilon of transformers' DetrFrozenBatchNorm2d (a constant in its forward)
UNUSED_LABEL = "N/A"
LEARNING_RATES = {"bb": 1e-3, "enc": 1e-3, "dec": 1e-4, "pred": 1e-3}  # the paper code's Adam rates
HOW_TO_SUPPLY = (
    "reach the Hugging Face hub once (the weights are then cached), or pass weights=PATH with the "
    f"model.safetensors file of {HUB_ID} (any DetrForObjectDetection state dict in .safetensors) or a "
    "directory written by DetrForObjectDetection.save_pretrained, or use weights='random'"
)

__all__ = [
    "HUB_ID",
    "NAME",
    "NUM_CLASSES_WITH_NO_OBJECT",
    "DetrStagedModel",
    "build",
    "postprocess",
    "split_pred",
]


def create_bidirectional_mask(**kwargs: Any) -> Any:
    """transformers' ``create_bidirectional_mask``, imported on first use."""
    from transformers.masking_utils import create_bidirectional_mask as create

    return create(**kwargs)


def logit_names(config: DetrConfig) -> tuple[str, ...]:
    """Name of each class-logit index: ``id2label`` of ids ``0 .. num_labels - 1`` (``"N/A"`` where
    the config has none), then ``"no object"``, DETR's last logit."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return tuple(id2label.get(i, UNUSED_LABEL) for i in range(config.num_labels)) + (NO_OBJECT,)


def split_pred(x: Tensor) -> tuple[Tensor, Tensor]:
    """``pred`` (…×96) -> (class logits …×92, boxes …×4 as normalised cx, cy, w, h)."""
    return x[..., :-NUM_BOX_COORDS], x[..., -NUM_BOX_COORDS:]


def postprocess(logits: Tensor, boxes: Tensor, sizes: Tensor) -> list[dict[str, Tensor]]:
    """DETR's own post-processing (as its ``PostProcess``): softmax over the 92 logits, the
    no-object column dropped, each query's score and label the maximum and arg-max over the real
    classes (the label is the COCO category id), boxes normalised (cx, cy, w, h) -> xyxy pixels of
    ``sizes`` (B×2 (h, w) per image). One dict per image (``scores``, ``labels``, ``boxes``), on the CPU."""
    prob = logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    from torchvision.ops import box_convert

    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy")
    b = xyxy.shape[0]
    sizes = torch.as_tensor(sizes, dtype=torch.float32).reshape(b, 2).to(xyxy.device)
    scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], -1)[:, None, :]
    xyxy = xyxy * scale
    return [{"scores": scores[i].cpu(), "labels": labels[i].cpu(), "boxes": xyxy[i].cpu()} for i in range(b)]


class DetrStagedModel(StagedModel):
    """A ``DetrForObjectDetection`` exposed through the stages ``("bb", "enc", "dec", "pred")``.

    ``detr`` is the wrapped Hugging Face model; ``input_size`` (H, W) must be divisible by 32.
    Several adapters may share one ``detr`` (e.g. at different input sizes).
    """

    name = NAME
    stages = ("bb", "enc", "dec", "pred")

    def __init__(self, detr: DetrForObjectDetection, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        self.detr = detr
        self.input_size = _check_input_size(input_size)
        # Constants of the preprocessing, not weights: kept out of the state dict.
        self.set_normalization(FAMILY.mean, FAMILY.std)
        self.meta = FAMILY.meta(
            class_names=logit_names(detr.config),
            learning_rates=dict(LEARNING_RATES),
            stage_layouts={stage: "tokens" for stage in self.stages},  # pred: one row per query
            finetune_stage="dec",
        )

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, columns) of ``bb``/``enc``, e.g. (15, 20) at 480×640."""
        h, w = self.input_size
        return h // STRIDE, w // STRIDE

    # -- StagedModel -----------------------------------------------------------------------------
    def prepare(self, images: Tensor) -> dict[str, Any]:
        """Position embeddings, feature-resolution pixel mask, grid and image size of this batch."""
        b, (h, w) = images.shape[0], self.grid
        mask = torch.ones(b, h, w, dtype=torch.bool, device=images.device)
        shape = torch.Size([b, self.detr.config.d_model, h, w])
        dtype = self.detr.model.input_projection.weight.dtype  # the model's compute dtype (a bf16 fast copy's too)
        pos = self.detr.model.position_embedding(shape=shape, device=images.device, dtype=dtype, mask=mask)
        return {
            "pos": pos.flatten(2).transpose(1, 2).contiguous(),
            "mask": mask,
            "grid": (h, w),
            "image_size": tuple(int(s) for s in images.shape[-2:]),
        }

    def step(self, stage: str, x: Tensor, context: dict[str, Any]) -> Tensor:
        if stage == "bb":
            return self._backbone(x)
        if stage == "enc":
            return self._encoder_layers(x, context)[-1]
        if stage == "dec":
            return self._decoder_layers(x, context)[-1]
        if stage == "pred":
            return torch.cat([self.detr.class_labels_classifier(x), self.detr.bbox_predictor(x).sigmoid()], -1)
        raise ModinvError(f"unknown stage {stage!r} for model {self.name!r}; valid stages: {', '.join(self.stages)}")

    def output(self, trace: Trace) -> dict[str, Tensor]:
        """DETR's own outputs from ``trace["pred"]``: ``logits`` B×100×92, ``pred_boxes`` B×100×4."""
        logits, boxes = split_pred(trace["pred"])
        return {"logits": logits, "pred_boxes": boxes}

    # -- roles -------------------------------------------------------------------------------------
    def token_stages(self) -> dict[str, TokenGrid]:
        """``bb`` and ``enc``: the C5 grid; the sine embedding enters every encoder layer beside them."""
        return {stage: TokenGrid(self.grid, position="added") for stage in ("bb", "enc")}

    def token_position(self, trace: Trace, stage: str) -> Tensor | None:
        return trace.context["pos"] if stage in ("bb", "enc") else None

    def prediction_stage(self) -> PredictionStage:
        return PredictionStage("pred", ("class", "box"))

    def detections(self, trace: Trace, sizes: Tensor | None = None) -> list[dict[str, Tensor]]:
        """:func:`postprocess` of ``trace["pred"]``; boxes in pixels of ``sizes`` (default: the input size)."""
        output = self.output(trace)
        b = output["logits"].shape[0]
        if sizes is None:
            sizes = torch.tensor([list(self.input_size)] * b)
        return postprocess(output["logits"], output["pred_boxes"], sizes)

    def task_targets(self, batch: Any, device: torch.device | str = "cpu") -> list[dict[str, Tensor]]:
        """DETR targets (normalised cxcywh boxes, labels = COCO category ids) of a COCO batch."""
        from modinv.models.set_loss import detr_targets

        if "boxes" not in batch or "labels" not in batch:
            raise ModinvError(f"the objective of {self.name!r} is its set loss on COCO boxes: fine-tune with "
                              "λ < 1 on a coco:ROOT[:split] source")
        return detr_targets(batch["boxes"], batch["labels"], tuple(self.input_size), device=device)

    def task_loss(self, output: Any, targets: Any) -> Tensor:
        """DETR's Hungarian set loss (class 1, L1 5, GIoU 2, no-object 0.1)."""
        from modinv.models.set_loss import set_loss

        return set_loss(output["logits"], output["pred_boxes"], targets)["loss"]

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        model = self.detr.model
        return {
            "bb": [model.backbone, model.input_projection],
            "enc": [model.encoder],
            "dec": [model.decoder, model.query_position_embeddings],
            "pred": [self.detr.class_labels_classifier, self.detr.bbox_predictor],
        }

    def layer_stacks(self) -> tuple[str, ...]:
        return ("enc", "dec")

    def layers(self, images: Tensor) -> dict[str, list[Tensor]]:
        """Every encoder and decoder layer's output, each B×tokens×256.

        ``"enc"``: 7 tensors, the encoder input (= ``bb``) then the 6 layer outputs (last = ``enc``).
        ``"dec"``: 7 tensors, the decoder input (the zero target tokens) then the 6 layer outputs
        with the decoder LayerNorm applied (last = ``dec``).
        """
        self.check_images(images)
        images = images.to(self.device)
        context = self.prepare(images)
        enc = self._encoder_layers(self._backbone(images), context)
        return {"enc": enc, "dec": self._decoder_layers(enc[-1], context)}

    def fuse_for_inference(self) -> None:
        """Fold every frozen BatchNorm of the ResNet backbone into the convolution it follows (timm's
        ResNet registers each ``convN`` right before its ``bnN``, and ``downsample`` as conv, norm):
        a frozen forward pass then skips 53 elementwise scale-and-shift passes over the feature maps."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights
        from transformers.models.detr.modeling_detr import DetrFrozenBatchNorm2d

        for parent in self.detr.model.backbone.modules():
            children = list(parent.named_children())
            for (_, conv), (name, norm) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(norm, DetrFrozenBatchNorm2d):
                    conv.weight, conv.bias = fuse_conv_bn_weights(
                        conv.weight, conv.bias, norm.running_mean, norm.running_var, FROZEN_NORM_EPS,
                        norm.weight, norm.bias)
                    setattr(parent, name, nn.Identity())

    # -- internals ---------------------------------------------------------------------------------
    def _backbone(self, images: Tensor) -> Tensor:
        """[0, 1] images -> projected C5 tokens B×(h·w)×256 (row-major)."""
        pixel_mask = torch.ones(images.shape[0], *images.shape[-2:], device=images.device)
        feature_map, _ = self.detr.model.backbone(self.normalize(images), pixel_mask)[-1]
        return self.detr.model.input_projection(feature_map).flatten(2).transpose(1, 2).contiguous()

    def _encoder_layers(self, x: Tensor, context: dict[str, Any]) -> list[Tensor]:
        """``[x, layer 1 output, ..., layer 6 output]`` of DETR's encoder on tokens ``x``."""
        encoder = self.detr.model.encoder
        mask = create_bidirectional_mask(
            config=encoder.config, inputs_embeds=x, attention_mask=context["mask"].flatten(1)
        )
        h = F.dropout(x, p=encoder.dropout, training=encoder.training)  # as DetrEncoder (identity in eval)
        outs = [x]
        for layer in encoder.layers:
            h = layer(h, mask, spatial_position_embeddings=context["pos"])
            outs.append(h)
        return outs

    def _decoder_layers(self, memory: Tensor, context: dict[str, Any]) -> list[Tensor]:
        """``[zero queries, LayerNorm(layer 1 output), ..., LayerNorm(layer 6 output)]`` of DETR's
        decoder attending to the encoder output ``memory``."""
        model = self.detr.model
        decoder = model.decoder
        query_pos = model.query_position_embeddings.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        h = query_pos.new_zeros(query_pos.shape)
        memory_mask = create_bidirectional_mask(
            config=decoder.config,
            inputs_embeds=h,
            attention_mask=context["mask"].flatten(1),
            encoder_hidden_states=memory,
        )
        outs = [h]
        for layer in decoder.layers:
            h = layer(h, None, context["pos"], query_pos, memory, encoder_attention_mask=memory_mask)
            outs.append(decoder.layernorm(h))
        return outs


# -- builders ---------------------------------------------------------------------------------------
def _check_input_size(input_size: Any) -> tuple[int, int]:
    return check_input_size(input_size, STRIDE, "DETR-R50", f"(H, W) divisible by {STRIDE}")


def _config() -> DetrConfig:
    """The architecture of facebook/detr-resnet-50: timm ResNet-50 backbone (built without
    pretrained weights), 6+6 layers, d 256, 100 queries, 91 labels (92 logits with no-object)
    named by COCO category id as in the hub's config."""
    from transformers import DetrConfig

    id2label = dict(enumerate(coco_category_names()))
    return DetrConfig(use_timm_backbone=True, backbone="resnet50", num_labels=NUM_LABELS, id2label=id2label)


def _random(seed: int) -> DetrForObjectDetection:
    from transformers import DetrForObjectDetection

    with seeded(seed):
        return DetrForObjectDetection(_config())


def _pretrained() -> DetrForObjectDetection:
    try:  # the local cache first: no network at all
        return _load(HUB_ID, HUB_ID, local_files_only=True)
    except OSError:
        pass
    with guarded_download(HUB_ID, HOW_TO_SUPPLY):
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        # One request without retries: an offline machine fails here in seconds instead of after
        # the hub client's retry back-off.
        get_hf_file_metadata(hf_hub_url(HUB_ID, "config.json"), timeout=10)
        return _load(HUB_ID, HUB_ID)


def _from_path(path: str, seed: int) -> DetrForObjectDetection:
    """A save_pretrained directory or a state-dict file (loading draws no numbers from the caller's RNG)."""
    try:
        with seeded(seed):
            if os.path.isdir(path):
                return _load(path, path, local_files_only=True)
            state = load_state_file(path)
            if state and all(k.startswith("detr.") for k in state):  # a DetrStagedModel state dict
                state = {k[len("detr."):]: v for k, v in state.items()}
            # transformers' own loader accepts both key layouts: this version's module names and
            # the hub checkpoint's (which save_pretrained writes).
            return _load(None, path, config=_config(), state_dict=state)
    except ModinvError:
        raise
    except Exception as exc:
        raise ModinvError(f"cannot load DETR weights from {path!r} ({_first_line(exc)})") from None


def _load(name: str | None, source: str, **kwargs: Any) -> DetrForObjectDetection:
    """``DetrForObjectDetection.from_pretrained`` in float32, requiring every weight to fit (it
    would otherwise initialise missing ones at random)."""
    from transformers import DetrForObjectDetection

    detr, info = DetrForObjectDetection.from_pretrained(
        name, output_loading_info=True, dtype=torch.float32, weights_only=True, **kwargs
    )
    info["unexpected_keys"] = {k for k in info["unexpected_keys"] if not k.endswith("num_batches_tracked")}
    problems = [
        f"{kind.replace('_', ' ')} {', '.join(sorted(map(str, keys))[:3])}" for kind, keys in info.items() if keys
    ]
    if problems:
        raise ModinvError(f"weights in {source!r} do not fit this model: {'; '.join(problems)}")
    return detr


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build(
    weights: str = "random", seed: int = 0, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, **_: Any
) -> DetrStagedModel:
    """DETR-R50 with ``weights`` "pretrained" (hub, cached), "random" (initialised from ``seed``)
    or a local path (a save_pretrained directory or a state-dict file), in eval mode."""
    size = _check_input_size(input_size)
    weights = os.fspath(weights)
    if weights == "random":
        detr = _random(seed)
    elif weights == "pretrained":
        detr = _pretrained()
    else:
        detr = _from_path(weights, seed)
    return DetrStagedModel(detr, size).eval()


FAMILY = register_family(Family(
    name=NAME, builder=build, summary=f"DETR with a ResNet-50 backbone ({HUB_ID}), COCO detection",
    task="detection", stages=DetrStagedModel.stages, input_size=DEFAULT_INPUT_SIZE,
    stage_shapes={"bb": (300, 256), "enc": (300, 256), "dec": (100, 256),  # 15×20 tokens, 100 queries
                  "pred": (100, NUM_CLASSES_WITH_NO_OBJECT + NUM_BOX_COORDS)},
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=(f"Hugging Face hub {HUB_ID}",), inverse_family="detr",
    recipes={"paper": DETR_PAPER},
))
