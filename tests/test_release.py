"""The release at the repo root: trained with the seed's recipe, meets the target on the full MNIST test split when
evaluated from this checkout, and its card and records agree."""

import json

import pytest
import yaml
from transformers import AutoImageProcessor, AutoModelForImageClassification

from minivision_hf.data import load_mnist
from minivision_hf.training import RECIPES
from scripts import eval_model
from tests.conftest import REPO_ROOT

RECORD = json.loads((REPO_ROOT / "records" / "run_record.json").read_text())
RESULT = json.loads((REPO_ROOT / "records" / "eval_test.json").read_text())


def test_release_was_trained_with_the_seed_recipe():
    assert RECORD["recipe"] == "seed"
    values = RECORD["recipe_values"]
    seed = RECIPES["seed"]
    assert (values["lr"], values["momentum"], values["scheduler"], values["step_epochs"], values["gamma"]) == (
        0.01, 0.8, "step", 3, 0.5,
    )  # fmt: skip
    assert (values["batch_size"], values["epochs"], values["best_model"]) == (256, 40, True)
    assert (values["max_shift"], values["max_degrees"], values["label_smoothing"]) == (2, 10.0, 0.0)
    assert values["weight_decay"] == seed.weight_decay == 0.0
    assert RECORD["dataset"]["train"] == 60_000 and RECORD["dataset"]["eval"] == 10_000
    assert len(RECORD["epochs"]) == 40 and RECORD["kept"] == "best"


def test_card_and_readme_numbers_match_the_evaluation_record():
    card = (REPO_ROOT / "model_card.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": RESULT["accuracy"], "loss": RESULT["loss"]}
    assert RESULT["num_samples"] == 10_000 and RESULT["split"] == "test"


@pytest.mark.slow
def test_release_meets_the_target_on_the_full_test_split(mnist_dir):
    model = AutoModelForImageClassification.from_pretrained(REPO_ROOT)
    processor = AutoImageProcessor.from_pretrained(REPO_ROOT)
    result = eval_model.evaluate_model(model, processor, load_mnist(str(mnist_dir), "test"), progress=False)
    assert result["num_samples"] == 10_000
    assert result["accuracy"] >= 0.993  # the seed card's 99.3%
    assert result["accuracy"] == pytest.approx(RESULT["accuracy"], abs=1e-4)
    assert result["loss"] == pytest.approx(RESULT["loss"], rel=1e-3)
