"""Accuracy as an `evaluate` metric module that loads offline: `evaluate.load("<this folder>")`.

`evaluate.load("accuracy")` fetches its script from the Hub; this module computes the same value (the fraction of
predictions equal to the references) so evaluation works on machines without network access.
"""

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions that equal their reference label.",
            citation="",
            inputs_description="predictions: list of int class ids; references: list of int class ids",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("accuracy of an empty set is undefined")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(predictions)}
