"""Offline `evaluate` metric modules shipped with the package (the `train` extra provides `evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..extras import explain_missing_extra

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).parent


def load_accuracy() -> evaluate.EvaluationModule:
    """The `evaluate` accuracy metric, loaded from the module shipped here, so it works without the Hub.

    `evaluate` is imported here, not at the top, so that the package imports without the `train` extra."""
    with explain_missing_extra():
        import evaluate

    return evaluate.load(str(METRICS_DIR / "accuracy"))
