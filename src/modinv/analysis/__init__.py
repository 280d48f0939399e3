"""The paper's analyses as library functions returning result objects (numbers + figure data, with
``to_json()``), each with a figure function taking the result; ``modinv analyze`` is their CLI.

Each analysis is exported here under the name of its CLI command::

    from modinv import analysis
    result = analysis.stages(model, chain, source)       # modinv analyze stages
    result = analysis.evaluate(model, chain, source)     # modinv evaluate
    analysis.stages_figure(result, "stages.png")

``stages`` (per-stage error vs the mean image), ``color`` (pairwise MSE under colour filters),
``structure`` (pred⁻¹ FD vs OH: FD = full distribution, the softmax of all class logits; OH =
one-hot of the arg-max class), ``tokens`` (token noise: bb_man / enc_man = 20% of the tokens
replaced at bb / enc; enc_man+ = bb_man passed on through the encoder), ``errors`` (detection
errors), ``layers`` (intermediate layers), ``evaluate`` and ``efficiency``. Each of these names
is the analysis's module, which, called, runs the analysis (``analysis.stages(...)`` is
``stage_errors(...)``); the old function names (``stage_errors``, ``token_noise_analysis``, ...)
keep working.
"""

import sys
import types
from collections.abc import Callable
from typing import Any

from modinv.analysis import color, efficiency, errors, evaluate, layers, stages, structure, tokens  # noqa: F401
from modinv.analysis.color import color_analysis
from modinv.analysis.color_figures import color_figure
from modinv.analysis.efficiency import efficiency_figure, measure_efficiency
from modinv.analysis.errors import detection_error_analysis, detection_error_figure
from modinv.analysis.evaluate import Evaluation, evaluate_chain, evaluate_chains
from modinv.analysis.layers import layer_analysis, layer_figure
from modinv.analysis.reconstruct import reconstruct_stages, reconstruction_figure
from modinv.analysis.stages import stage_errors, stage_errors_figure
from modinv.analysis.structure import structure_analysis, structure_figure
from modinv.analysis.tokens import token_noise_analysis, token_noise_figure

# The CLI's names: ``modinv.analysis.stages`` is both the module and, called, its analysis
# (``stage_errors``), so that ``analysis.stages(model, chain, source)``, ``from modinv.analysis
# import stages`` and ``stages.StageErrors`` all work.
ANALYSES: dict[str, Callable[..., Any]] = {
    "stages": stage_errors, "color": color_analysis, "structure": structure_analysis,
    "tokens": token_noise_analysis, "errors": detection_error_analysis, "layers": layer_analysis,
    "evaluate": evaluate_chain, "efficiency": measure_efficiency,
}


class AnalysisModule(types.ModuleType):
    """A module of :mod:`modinv.analysis` that, called, runs its analysis (``__analysis__``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__analysis__(*args, **kwargs)


for _name, _function in ANALYSES.items():
    _module = sys.modules[f"{__name__}.{_name}"]
    _module.__analysis__ = _function
    _module.__class__ = AnalysisModule

# the figures under the CLI's names
stages_figure = stage_errors_figure
tokens_figure = token_noise_figure
errors_figure = detection_error_figure
layers_figure = layer_figure

__all__ = [
    "ANALYSES", "AnalysisModule", "Evaluation", "color", "color_analysis", "color_figure",
    "detection_error_analysis", "detection_error_figure", "efficiency", "efficiency_figure", "errors",
    "errors_figure", "evaluate", "evaluate_chain", "evaluate_chains", "layer_analysis", "layer_figure", "layers",
    "layers_figure", "measure_efficiency", "reconstruct_stages", "reconstruction_figure", "stage_errors",
    "stage_errors_figure", "stages", "stages_figure", "structure", "structure_analysis", "structure_figure",
    "token_noise_analysis", "token_noise_figure", "tokens", "tokens_figure",
]
