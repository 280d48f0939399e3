"""``modinv explore``: a model and its inverse chains in the browser (a Gradio app, ``modinv[app]``).

Layer: above ``demo``, below ``cli``. :mod:`~modinv.explore.compute` and
:mod:`~modinv.explore.inputs` hold the computations and need no browser (nor Gradio);
:mod:`~modinv.explore.app` lays them out as a page; :mod:`~modinv.explore.space` writes a Hugging
Face Space folder that runs the same page.
"""

from modinv.explore.compute import Explorer, Perturbation, Session, View, explore, token_stages
from modinv.explore.inputs import Photo, read_upload, sample_photo

__all__ = ["Explorer", "Perturbation", "Photo", "Session", "View", "explore", "read_upload", "sample_photo",
           "token_stages"]
