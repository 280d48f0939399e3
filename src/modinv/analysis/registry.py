"""The analyses, their CLI modules and the model roles each needs: what ``modinv analyze`` is built from.

    for name, analysis in ANALYSES.items():
        print(name, analysis.refusal(model) or "runs")

Every analysis works from the roles a model declares (:mod:`modinv.models.roles`); ``refusal``
gives the one sentence with which it refuses a model that lacks one (None: it runs), before any
data is read. ``color --robustness`` is the color analysis with its task metric, listed as its own
row (:data:`VARIANTS`) because it needs a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from modinv.errors import ModinvError
from modinv.models.base import StagedModel
from modinv.models.roles import missing_role

__all__ = ["ANALYSES", "Analysis", "VARIANTS", "support"]


def _none(model: StagedModel) -> None:
    """Needs no role: any staged model with an inverse chain."""


def _structure(model: StagedModel) -> None:
    from modinv.analysis.structure import require_pred

    require_pred(model)


def _tokens(model: StagedModel) -> None:
    from modinv.analysis.token_noise import token_pair

    token_pair(model)


def _errors(model: StagedModel) -> None:
    if model.meta.task != "detection":
        raise missing_role("errors", "a detector's post-processing of raw outputs into detections", model)


def _layers(model: StagedModel) -> None:
    if not model.layer_stacks():
        raise missing_role("layers", "stacks of same-shape intermediate layers", model)


def _robustness(model: StagedModel) -> None:
    from modinv.analysis.color import task_of

    task_of(model)


@dataclass(frozen=True)
class Analysis:
    """One analysis: its ``name`` (the ``modinv analyze`` subcommand), the ``cli`` module that runs
    it (``add_arguments(parser)``, ``run(args)``) and ``check(model)``, which raises the one
    sentence naming the role ``model`` lacks."""

    name: str
    cli: str
    check: Callable[[StagedModel], None] = _none

    def refusal(self, model: StagedModel) -> str | None:
        """Why this analysis refuses ``model`` (one sentence), or None when it runs."""
        try:
            self.check(model)
        except ModinvError as exc:
            return str(exc)
        return None


def _entry(name: str, check: Callable[[StagedModel], None] = _none) -> Analysis:
    return Analysis(name, f"modinv.cli.analyze.{name}", check)


ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    _entry("stages"),
    _entry("color"),
    _entry("structure", _structure),
    _entry("tokens", _tokens),
    _entry("errors", _errors),
    _entry("layers", _layers),
)}
# variants of an analysis that need more than it does (an option of its subcommand)
VARIANTS: dict[str, Analysis] = {"color --robustness": Analysis("color --robustness", ANALYSES["color"].cli,
                                                                _robustness)}


def support(model: StagedModel) -> dict[str, str | None]:
    """``{analysis: None (runs) or the sentence naming the missing role}`` for ``model``, every
    analysis and variant in order."""
    return {name: a.refusal(model) for name, a in (ANALYSES | VARIANTS).items()}
