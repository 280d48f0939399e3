"""DETR's Hungarian set loss, kept importable from here: it lives beside the DETR adapter
(:mod:`modinv.models.set_loss`), which declares it as its task loss (``model.task_loss``)."""

from modinv.models.set_loss import DETR_WEIGHTS, SetLossWeights, detr_targets, hungarian_match, match_cost, set_loss

__all__ = ["DETR_WEIGHTS", "SetLossWeights", "detr_targets", "hungarian_match", "match_cost", "set_loss"]
