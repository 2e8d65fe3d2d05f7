"""Offline `evaluate` metric modules shipped with the package."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def load_accuracy() -> evaluate.EvaluationModule:
    """The `evaluate` accuracy metric, loaded from the module shipped here (works without the Hub)."""
    return evaluate.load(str(METRICS_DIR / "accuracy"))
