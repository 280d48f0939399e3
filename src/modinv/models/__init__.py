"""Model adapters exposing the StagedModel interface, each declaring its ModelMeta."""

from modinv.models.base import IMAGE, ModelMeta, StagedModel, Trace
from modinv.models.modules import from_module
from modinv.models.family import Family, register_family
from modinv.models.registry import available_models, list_models, load_model, model_family

__all__ = ["IMAGE", "Family", "ModelMeta", "StagedModel", "Trace", "available_models", "from_module", "list_models",
           "load_model", "model_family", "register_family"]
