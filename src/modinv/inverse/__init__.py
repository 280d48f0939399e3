"""Inverse components (one per stage, mapping it back to the stage before) and the InverseChain.

- :mod:`modinv.inverse.blocks`: transformer and upsampling blocks shared by all components;
- one file per family of the paper's components (``arch="paper"``), e.g. :mod:`modinv.inverse.detr`,
  :mod:`modinv.inverse.vit`; a model names its family in ``model.meta.inverse_family``;
- :mod:`modinv.inverse.auto`: components for any staged model from its stage shapes (``arch="auto"``);
- :mod:`modinv.inverse.registry`: ``build_component(config)`` rebuilds a component from its JSON
  config; ``FAMILIES`` lists modinv's family files, a plugin's come from its model family
  (``inverse_module``) or :func:`~modinv.inverse.registry.register_inverse_family`;
- :mod:`modinv.inverse.chain`: :class:`InverseChain` (build, reconstruct, replace, parameter counts);
- :mod:`modinv.inverse.storage`: the saved chain folder (safetensors + JSON, manifest, checksums);
- :mod:`modinv.inverse.remote`: chain folders to and from the Hugging Face hub (:mod:`modinv.hub`
  wraps it for chains).
"""

from modinv.inverse.chain import InverseChain
from modinv.inverse.registry import build_component, component_kinds, register
from modinv.inverse.storage import load_component, read_manifest

__all__ = [
    "InverseChain",
    "build_component",
    "component_kinds",
    "load_component",
    "read_manifest",
    "register",
]
