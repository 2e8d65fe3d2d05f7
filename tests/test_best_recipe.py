"""Issue 13: the `best` recipe (weight EMA, held-out validation split), its augmentation and calibration pieces, and
the shipped variant folder variants/best (loads, carries its temperature, reproduces its recorded test accuracy,
publishes as the `best` branch).

    .venv/bin/python -m pytest -q tests/test_best_recipe.py            # seconds, plus the slow ones on real MNIST
"""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minivision_hf as mv
from minivision_hf.data import elastic_displacement, random_shift_rotate, validation_split
from minivision_hf.ema import EMA_FILE, WeightEMA
from minivision_hf.training import RECIPES
from scripts import eval_model, make_model_card, make_variant, plot_recipe_search, train, validation_ensemble

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANT = REPO_ROOT / "variants" / "best"
RECIPES_BEST = REPO_ROOT / "records" / "recipes_best.json"


# -- pieces ------------------------------------------------------------------------------------------------------


def test_the_choice_rule_ranks_variants_run_on_every_seed_and_ties_go_to_the_shortest():
    """A variant stopped after one good seed is not chosen over ones run on three; equal means: fewer epochs."""
    from scripts.make_model_card import variants_table

    def run(variant: str, seed: int, val: float, epochs: int = 30) -> dict:
        return {"variant": variant, "recipe": "plus", "flags": "", "epochs": epochs, "seed": seed, "val_accuracy": val}

    search = {"runs": [run("long", 1, 0.996, 50), run("long", 2, 0.995, 50), run("long", 3, 0.995, 50),
                       run("short", 1, 0.995, 30), run("short", 2, 0.996, 30), run("short", 3, 0.995, 30),
                       run("worse", 1, 0.994), run("worse", 2, 0.995), run("worse", 3, 0.995),
                       run("one-seed", 1, 0.999)]}  # fmt: skip
    table = variants_table([(search, "records/x.json")])
    marked = [line for line in table.splitlines() if "best on validation" in line]
    assert len(marked) == 1 and marked[0].startswith("| short ")


def test_validation_split_is_seeded_disjoint_and_complete():
    train_rows, val_rows = validation_split(1000, 100, seed=0)
    again_train, again_val = validation_split(1000, 100, seed=0)
    assert torch.equal(train_rows, again_train) and torch.equal(val_rows, again_val)
    assert len(val_rows) == 100 and len(train_rows) == 900
    assert set(train_rows.tolist()).isdisjoint(val_rows.tolist())
    assert sorted(train_rows.tolist() + val_rows.tolist()) == list(range(1000))
    assert not torch.equal(validation_split(1000, 100, seed=1)[1], val_rows)
    with pytest.raises(ValueError):
        validation_split(10, 10)


def test_shear_off_keeps_the_existing_augmentation_stream():
    images = torch.rand(8, 1, 28, 28)
    before = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0))
    after = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0), shear=0.0)
    assert torch.equal(before, after)  # seed and plus recipes draw exactly as before
    sheared = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0), shear=10.0)
    assert not torch.equal(before, sheared) and sheared.shape == images.shape


def test_pure_shear_moves_rows_in_proportion_to_their_height():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, :, 14] = 1.0  # a vertical bar: a shear slants it, top and bottom move in opposite directions
    out = random_shift_rotate(image, 0, 0.0, (1.0, 1.0), torch.Generator().manual_seed(3), mode="bilinear", shear=20)
    top, bottom = out[0, 0, 2].argmax().item(), out[0, 0, 25].argmax().item()
    assert top != bottom and abs(out[0, 0, 14].argmax().item() - 14) <= 1


def test_elastic_distortion_is_smooth_seeded_and_off_by_default():
    field = elastic_displacement(64, 28, 28, alpha=34.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    again = elastic_displacement(64, 28, 28, alpha=34.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    assert field.shape == (64, 28, 28, 2) and torch.equal(field, again)
    pixels = field * 14  # normalised units -> pixels (the grid spans 2 over 28 pixels)
    rms = pixels.pow(2).mean().sqrt().item()
    assert 0.8 < rms < 2.0  # Simard's alpha 34, sigma 4: about a pixel and a half, not a scramble
    neighbour = (pixels[:, :, 1:] - pixels[:, :, :-1]).pow(2).mean().sqrt().item()
    assert neighbour < 0.25 * rms  # smooth: neighbouring pixels move together
    images = torch.rand(8, 1, 28, 28)
    plain = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0))
    off = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0), elastic=(0.0, 4.0))
    assert torch.equal(plain, off)  # alpha 0 draws nothing: the existing streams are unchanged
    on = random_shift_rotate(images, 2, 10.0, (0.9, 1.1), torch.Generator().manual_seed(0), elastic=(34.0, 4.0))
    assert on.shape == images.shape and not torch.equal(plain, on)


def test_weight_ema_averages_and_swaps_back():
    model = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(model.weight)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert ema.shadow["weight"].flatten().tolist() == pytest.approx([0.9, 0.9])
    ema.update(model)  # decay min(0.5, 2/11)
    d = 2 / 11
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(d * 0.9 + (1 - d))
    with ema.swapped_in(model):
        assert model.weight[0, 0].item() == pytest.approx(ema.shadow["weight"][0, 0].item())
    assert model.weight[0, 0].item() == 1.0


def test_ece_and_temperature_fit():
    torch.manual_seed(0)
    logits = 2.0 * torch.randn(20000, 10)
    labels = torch.multinomial(logits.softmax(-1), 1)[:, 0]  # softmax(logits) is calibrated by construction
    # sharpened logits (x3) are overconfident; the fitted temperature undoes it
    t = make_variant.fit_temperature(3.0 * logits, labels)
    assert 2.7 < t < 3.3
    probs = (3.0 * logits).softmax(-1)
    assert eval_model.expected_calibration_error((3.0 * logits / t).softmax(-1), labels) < \
        eval_model.expected_calibration_error(probs, labels)  # fmt: skip
    perfect = torch.nn.functional.one_hot(labels, 10).float()
    assert eval_model.expected_calibration_error(perfect, labels) == pytest.approx(0.0)


def test_tta_shift_fills_with_background():
    pixels = torch.zeros(1, 1, 4, 4)
    pixels[0, 0, 0, 0] = 5.0
    moved = eval_model.shifted(pixels, 1, 1, fill=-1.0)
    assert moved[0, 0, 1, 1] == 5.0 and moved[0, 0, 0, 0] == -1.0 and moved.shape == pixels.shape


# -- the recipe --------------------------------------------------------------------------------------------------


def test_best_recipe_smoke_run_keeps_the_ema_and_evaluates_on_held_out_rows(tiny_dir, tmp_path):
    record = train.main(["--recipe", "best", "--smoke", "--dataset", str(tiny_dir), "--output-dir", str(tmp_path),
                         "--no-progress"])  # fmt: skip
    assert record["kept"] == "ema" and record["recipe"] == "best"
    assert record["recipe_values"]["ema_decay"] == RECIPES["best"].ema_decay > 0
    assert record["dataset"]["eval_split"].startswith("validation (100 rows of train")
    assert all("ema_accuracy" in epoch and "test_accuracy" in epoch for epoch in record["epochs"])
    assert (tmp_path / "model.safetensors").is_file()
    assert any((tmp_path / d / EMA_FILE).is_file() for d in [p.name for p in tmp_path.glob("checkpoint-*")])
    # the saved weights are the EMA: they score exactly what the run recorded for its kept model
    model = mv.MiniVisionForImageClassification.from_pretrained(tmp_path)
    assert record["final_eval"]["accuracy"] == pytest.approx(record["epochs"][-1]["ema_accuracy"])
    assert model.num_parameters() == 824_650


def test_distillation_loss_mixes_the_labels_and_the_teachers_mean_softmax(tmp_path):
    """--distill-from/--distill-weight: while training, loss = (1 - w) CE(labels) + w T^2 KL(teachers' mean softmax at
    T || student's at T) on the same batch; evaluation keeps the plain cross-entropy."""
    from transformers import TrainingArguments

    from minivision_hf.training import MiniVisionTrainer, Recipe

    torch.manual_seed(0)
    config = mv.MiniVisionConfig(dropout=0.0)
    student = mv.MiniVisionForImageClassification(config).train()
    teachers = [mv.MiniVisionForImageClassification(config).eval() for _ in range(2)]
    batch = {"pixel_values": torch.randn(8, 1, 28, 28), "labels": torch.randint(0, 10, (8,))}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    recipe = Recipe(distill_weight=0.3, distill_temperature=2.0)
    trainer = MiniVisionTrainer(model=student, args=args, recipe=recipe, teachers=teachers)
    loss = trainer.compute_loss(student, dict(batch))

    logits = student(pixel_values=batch["pixel_values"]).logits
    with torch.no_grad():
        target = torch.stack([torch.softmax(t(pixel_values=batch["pixel_values"]).logits / 2.0, -1)
                              for t in teachers]).mean(0)  # fmt: skip
    kl = (target * (target.log() - torch.log_softmax(logits / 2.0, -1))).sum(-1).mean() * 4.0
    expected = 0.7 * torch.nn.functional.cross_entropy(logits, batch["labels"]) + 0.3 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    student.eval()
    plain = torch.nn.functional.cross_entropy(student(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    torch.testing.assert_close(trainer.compute_loss(student, dict(batch)), plain)
    with pytest.raises(ValueError, match="needs teachers"):
        MiniVisionTrainer(model=student, args=args, recipe=recipe)


def test_distillation_run_records_its_teachers_and_refuses_missing_ones(tiny_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    train.main(["--recipe", "best", "--smoke", "--dataset", str(tiny_dir), "--output-dir", str(teacher),
                "--no-progress"])  # fmt: skip
    record = train.main(["--recipe", "best", "--smoke", "--dataset", str(tiny_dir), "--output-dir",
                         str(tmp_path / "student"), "--no-progress", "--distill-from", str(teacher),
                         "--distill-weight", "0.5"])  # fmt: skip
    assert record["recipe_values"]["distill_weight"] == 0.5 and record["args"]["distill_from"] == [str(teacher)]
    assert record["final_eval"]["accuracy"] > 0.1
    for flags, message in [(["--distill-weight", "0.5"], "needs teacher models"),
                           (["--distill-from", str(tmp_path / "missing"), "--distill-weight", "0.5"], "no such folder"),
                           (["--distill-from", str(teacher), "--distill-weight", "1.5"], "--distill-weight 1.5")]:
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--recipe", "best", "--smoke", "--dataset", str(tiny_dir), "--output-dir",
                        str(tmp_path / "refused"), *flags])  # fmt: skip
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_poly_loss_adds_epsilon_times_one_minus_the_labels_probability(tmp_path):
    """--poly-epsilon e: while training, loss = CE + e x mean(1 - softmax(logits)[label]) (Poly-1); evaluation keeps
    the plain cross-entropy."""
    from transformers import TrainingArguments

    from minivision_hf.training import MiniVisionTrainer, Recipe

    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig(dropout=0.0)).train()
    batch = {"pixel_values": torch.randn(8, 1, 28, 28), "labels": torch.randint(0, 10, (8,))}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = MiniVisionTrainer(model=model, args=args, recipe=Recipe(poly_epsilon=2.0))
    logits = model(pixel_values=batch["pixel_values"]).logits
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"])
    p_label = logits.softmax(-1)[torch.arange(8), batch["labels"]]
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), ce + 2.0 * (1 - p_label).mean())
    model.eval()  # BatchNorm's running statistics now: the plain cross-entropy of the eval-mode logits
    plain = torch.nn.functional.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])
    torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), plain)


def test_clean_epochs_train_the_last_epochs_on_unaugmented_rows(tiny_dir, tmp_path, monkeypatch, capsys):
    """--clean-epochs N: the collator augments the training rows in every epoch but the last N (counted from the
    optimizer step, so a resumed run agrees); the plain path refuses it."""
    import minivision_hf.data as data

    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return random_shift_rotate(*args, **kwargs)

    monkeypatch.setattr(data, "random_shift_rotate", counting)
    augmented = {}
    for clean in (0, 1, 2):
        calls.clear()
        out = str(tmp_path / f"clean{clean}")
        record = train.main(["--recipe", "best", "--smoke", "--dataset", str(tiny_dir), "--output-dir", out,
                             "--no-progress", "--clean-epochs", str(clean)])  # fmt: skip
        assert record["recipe_values"]["clean_epochs"] == clean and len(record["epochs"]) == 2
        augmented[clean] = sum(calls)
        card = make_model_card.recipe_table(record)  # a card says which epochs saw no augmentation
        assert (f"none in the last {clean} epoch" in card) == (clean > 0)
    rows = 512 - 100  # the smoke run's training rows (its 100 validation rows are never augmented)
    assert augmented == {0: 2 * rows, 1: rows, 2: 0}
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--recipe", "seed", "--smoke", "--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "p"),
                    "--data-path", "plain", "--clean-epochs", "1"])  # fmt: skip
    assert exit_info.value.code == 2 and "--clean-epochs 1" in capsys.readouterr().err


def test_validation_ensemble_and_search_plot(tiny_dir, tmp_path, capsys):
    runs = []
    for seed in (1, 2):
        out = tmp_path / f"run{seed}"
        train.main(["--recipe", "best", "--smoke", "--seed", str(seed), "--dataset", str(tiny_dir), "--output-dir",
                    str(out), "--no-progress"])  # fmt: skip
        runs.append(str(out))
    result = validation_ensemble.main([*runs, "--dataset", str(tiny_dir), "--output", str(tmp_path / "ens.json")])
    assert set(result["runs"]) == {"run1", "run2"} and result["validation"]["val_size"] == 100
    assert 0 <= result["errors_in_every_run"] <= min(result["errors_per_run"].values())
    assert json.loads((tmp_path / "ens.json").read_text())["ensemble_accuracy"] == result["ensemble_accuracy"]
    record = Path(runs[0]) / "run_record.json"  # refused: a run named twice, an --output over an input's record,
    before = record.read_bytes()  # a record of another kind (an ensemble of 1, the input overwritten, a KeyError)
    assert "named twice" in _usage_error(validation_ensemble.main, [runs[0], runs[0]], capsys)
    assert "an input" in _usage_error(validation_ensemble.main, [*runs, "--output", str(record)], capsys)
    assert record.read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run_record.json").write_text(json.dumps({"accuracy": 0.5}))
    assert "is not a run record" in _usage_error(validation_ensemble.main, [runs[0], str(tmp_path / "other")], capsys)
    with pytest.raises(SystemExit):  # a run that held nothing out cannot be compared on validation rows
        train.main(["--recipe", "plus", "--smoke", "--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "p"),
                    "--no-progress"])  # fmt: skip
        validation_ensemble.main([runs[0], str(tmp_path / "p"), "--dataset", str(tiny_dir)])
    search = sorted(str(p) for p in (REPO_ROOT / "records").glob("recipe_search*.json"))
    tested = sorted(str(p) for p in (REPO_ROOT / "records").glob("recipes_best*.json"))
    if not search:
        pytest.skip("no recipe search records committed")
    out = plot_recipe_search.main(["--search", *search, "--tested", *tested, "--out", str(tmp_path / "search.png")])
    assert out.is_file() and out.stat().st_size > 10_000


def _usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, argv
    return capsys.readouterr().err


def test_plot_recipe_search_refuses_no_runs_and_records_of_another_kind(tmp_path, capsys):
    """No records, or records without runs, wrote an empty PNG; a record of another kind was a KeyError traceback."""
    (tmp_path / "empty.json").write_text('{"runs": []}')
    (tmp_path / "other.json").write_text('{"epochs": []}')
    out = ["--out", str(tmp_path / "o.png")]
    for argv in (["--search", str(tmp_path / "empty.json"), "--tested"], ["--search", "--tested"]):
        assert "no runs to plot" in _usage_error(plot_recipe_search.main, [*argv, *out], capsys)
    assert "is not a record of scripts/compare_recipes.py" in _usage_error(
        plot_recipe_search.main, ["--search", str(tmp_path / "other.json"), "--tested", *out], capsys)
    assert not (tmp_path / "o.png").exists()


def test_best_recipe_is_the_recipe_of_the_recorded_runs():
    if not RECIPES_BEST.is_file():
        pytest.skip("records/recipes_best.json not committed yet")
    record = json.loads(RECIPES_BEST.read_text())
    expected = {k: v for k, v in dataclasses.asdict(RECIPES["best"]).items() if k != "notes"}
    for run in record["runs"]:
        found = {k: v for k, v in run["recipe_values"].items() if k != "notes"}
        assert found == {k: expected[k] for k in found}, run["output_dir"]
    assert record["runs"] and all(run["accuracy"] is not None and run["val_accuracy"] for run in record["runs"])


# -- the shipped variant -----------------------------------------------------------------------------------------

needs_variant = pytest.mark.skipif(not (VARIANT / "config.json").is_file(), reason="variants/best not built yet")


@needs_variant
def test_variant_folder_is_complete_and_names_its_run():
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "model_card.md",
                 "configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
                 "records/run_record.json", "records/eval_test.json", "records/calibration.json"):  # fmt: skip
        assert (VARIANT / name).is_file(), name
    config = json.loads((VARIANT / "config.json").read_text())
    calibration = json.loads((VARIANT / "records" / "calibration.json").read_text())
    assert config["calibration_temperature"] == calibration["temperature"] > 0
    assert calibration["fitted_on"].startswith("validation")
    assert mv.MiniVisionConfig(**{k: v for k, v in config.items() if k in ("conv_channels", "hidden_size")}) \
        .to_dict()["conv_channels"] == [32, 64]  # fmt: skip
    run = json.loads((VARIANT / "records" / "run_record.json").read_text())
    assert run["kept"] == "ema"
    card = (VARIANT / "model_card.md").read_text()
    result = json.loads((VARIANT / "records" / "eval_test.json").read_text())
    assert f"{result['accuracy']:.2%}" in card and "revision=\"best\"" in card and "Every variant tried" in card


@needs_variant
def test_variant_code_is_the_packages_code():
    """The variant's remote-code files are the package's, byte for byte (save_pretrained copies them): a change to
    the model, processor or pipeline code must reach the `best` branch too."""
    for name in ("configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
                 "pipeline_minivision.py"):  # fmt: skip
        assert (VARIANT / name).read_bytes() == (REPO_ROOT / "minivision_hf" / name).read_bytes(), (
            f"variants/best/{name} differs from minivision_hf/{name}: copy it over (scripts.make_variant writes it "
            "with save_pretrained)"
        )


@needs_variant
def test_variant_loads_locally_and_as_remote_code(tiny_test):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(VARIANT)
    processor = AutoImageProcessor.from_pretrained(VARIANT)
    result = eval_model.evaluate_model(model, processor, tiny_test, progress=False)
    assert result["accuracy"] > 0.9 and model.config.calibration_temperature > 0
    code = f"""
import json, torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(VARIANT)!r}, trust_remote_code=True)
print(json.dumps({{"module": type(model).__module__, "t": model.config.calibration_temperature}}))
"""
    from tests.conftest import run_fresh

    out = run_fresh(code, REPO_ROOT)
    assert out["module"].startswith("transformers_modules") and out["t"] == model.config.calibration_temperature


@needs_variant
@pytest.mark.slow
def test_variant_reproduces_its_recorded_test_accuracy(mnist_dir):
    result = eval_model.main(["--model", str(VARIANT), "--dataset", str(mnist_dir), "--no-progress"])
    recorded = json.loads((VARIANT / "records" / "eval_test.json").read_text())
    assert result["accuracy"] == recorded["accuracy"] and result["loss"] == pytest.approx(recorded["loss"], abs=1e-5)
    assert result["ece"] == pytest.approx(recorded["ece"], abs=1e-6)
    if RECIPES_BEST.is_file():  # the shipped weights are one of the recipe's recorded runs
        runs = json.loads(RECIPES_BEST.read_text())["runs"]
        assert any(math.isclose(run["accuracy"], recorded["accuracy"]) for run in runs)


# -- publishing --------------------------------------------------------------------------------------------------


def _release_with_a_variant(tmp_path: Path) -> tuple[Path, Path]:
    """A release folder (random weights) with variants/best, and a copy of the Space: (release, space source)."""
    from tests.test_push_to_hub import _write_card

    release = tmp_path / "release"
    for folder, accuracy in ((release, 0.9921), (release / "variants" / "best", 0.9966)):
        torch.manual_seed(0)
        config = mv.MiniVisionConfig()
        model = mv.MiniVisionForImageClassification(config)
        if folder != release:
            model.config.calibration_temperature = 0.5
        model.save_pretrained(folder)
        mv.MiniVisionImageProcessor().save_pretrained(folder)
        (folder / "records").mkdir(parents=True)
        (folder / "records" / "eval_test.json").write_text(json.dumps({"accuracy": accuracy, "loss": 0.02}))
        _write_card(folder / "model_card.md", accuracy=accuracy, loss=0.02)
    space_src = tmp_path / "spaces_app"
    shutil.copytree(REPO_ROOT / "spaces_app", space_src, ignore=shutil.ignore_patterns("__pycache__",
                                                                                       "model_source.json"))
    return release, space_src


def test_push_publishes_variants_as_branches(tmp_path):
    """A release with variants/best: the model repo's main branch is the root release, branch `best` the variant,
    and the Space's model_source.json pins both and defaults to best."""
    from tests.hub_server import HubServer
    from tests.test_push_to_hub import REPO_ID, SPACE_ID, TOKEN, client_env

    release, space_src = _release_with_a_variant(tmp_path)
    with HubServer(token=TOKEN) as hub:
        argv = ["--repo-id", REPO_ID, "--release", str(release), "--space-src", str(space_src)]
        result = subprocess.run([sys.executable, "-m", "scripts.push_to_hub", *argv], cwd=REPO_ROOT,
                                env=client_env(hub, tmp_path / "home"), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        main_sha, best_sha = hub.head(REPO_ID), hub.head(REPO_ID, branch="best")
        assert main_sha != best_sha
        best_files = hub.files(REPO_ID, revision="best")
        assert json.loads(best_files["config.json"])["calibration_temperature"] == 0.5
        assert "calibration_temperature" not in json.loads(hub.files(REPO_ID)["config.json"])
        assert "0.9966" in best_files["README.md"].decode()
        source = json.loads(hub.files(SPACE_ID, "space")["model_source.json"])
        assert source["revision"] == main_sha and source["default"] == "best"
        assert source["variants"]["best"] == {"model": REPO_ID, "revision": best_sha}
        assert hub.variables(SPACE_ID)["MINIVISION_BEST_REVISION"] == best_sha
        # a user loads the branch by name
        code = f"""
import json
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({REPO_ID!r}, revision="best", trust_remote_code=True)
print(json.dumps({{"t": model.config.calibration_temperature}}))
"""
        env = client_env(hub, tmp_path / "fresh", token=None)
        proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"t": 0.5}


def test_a_dry_run_stages_the_variants_pins_and_no_variants_leaves_them_out(tmp_path):
    """A dry run's model_source.json names the variant branches the push would publish (revisions filled in at push
    time); with --no-variants it names none, and the root card drops its section pointing to them."""
    from scripts.push_to_hub import VARIANTS_SECTION
    from tests.hub_server import HubServer
    from tests.test_push_to_hub import REPO_ID, TOKEN, client_env

    release, space_src = _release_with_a_variant(tmp_path)
    card = release / "model_card.md"
    card.write_text(card.read_text() + f"\n## {VARIANTS_SECTION}\n\nBranch `best`.\n\n## Usage\n\nLoad it.\n")
    for extra, variants in (([], {"best": {"model": REPO_ID, "revision": None}}), (["--no-variants"], None)):
        out = tmp_path / f"out{len(extra)}"
        argv = ["--repo-id", REPO_ID, "--release", str(release), "--space-src", str(space_src), "--dry-run", str(out)]
        with HubServer(token=TOKEN) as hub:  # never called: a dry run sends nothing
            result = subprocess.run([sys.executable, "-m", "scripts.push_to_hub", *argv, *extra], cwd=REPO_ROOT,
                                    env=client_env(hub, tmp_path / "home", token=None), capture_output=True,
                                    text=True, timeout=600)  # fmt: skip
            assert hub.requests == []
        assert result.returncode == 0, result.stderr[-3000:]
        source = json.loads((out / "space" / "model_source.json").read_text())
        assert source.get("variants") == variants and source["revision"] is None
        staged_card = (out / "model" / "README.md").read_text()
        assert (f"## {VARIANTS_SECTION}" in staged_card) == (variants is not None)
        assert "## Usage\n\nLoad it." in staged_card and (out / "variants" / "best").is_dir() == (variants is not None)


@needs_variant
@pytest.mark.slow
def test_hub_branch_best_reproduces_the_recorded_accuracy(tmp_path, mnist_dir):
    """The repo's own release pushed to the loopback Hub: `scripts.eval_model` on (repo, revision="best"), as a user
    without the package would run it, gives the accuracy recorded in variants/best/records/eval_test.json."""
    from tests.hub_server import HubServer
    from tests.test_push_to_hub import REPO_ID, TOKEN, client_env

    with HubServer(token=TOKEN) as hub:
        push = subprocess.run([sys.executable, "-m", "scripts.push_to_hub", "--repo-id", REPO_ID],
                              cwd=REPO_ROOT, env=client_env(hub, tmp_path / "home"), capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert push.returncode == 0, push.stderr[-3000:]
        out = tmp_path / "eval.json"
        evaluate = subprocess.run([sys.executable, "-m", "scripts.eval_model", "--model", REPO_ID, "--revision", "best",
                                   "--trust-remote-code", "--dataset", str(mnist_dir), "--no-progress",
                                   "--output", str(out)], cwd=REPO_ROOT, env=client_env(hub, tmp_path / "user", None),
                                  capture_output=True, text=True, timeout=900)  # fmt: skip
        assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads(out.read_text())
    recorded = json.loads((VARIANT / "records" / "eval_test.json").read_text())
    assert result["accuracy"] == recorded["accuracy"] and result["loss"] == pytest.approx(recorded["loss"], abs=1e-5)


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_killed_make_variant_leaves_the_old_variant_whole(tiny_dir, tmp_path, monkeypatch):
    """make_variant writes weights, then records, evaluations, plots and card: killed part-way (here in the test
    evaluation) it leaves the old variant whole (it used to leave the new weights beside the old records and card)
    and no staging folder; the rerun writes the new variant whole."""
    run = tmp_path / "run"  # a finished run: the seed release and its record
    run.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copyfile(REPO_ROOT / name, run / name)
    shutil.copyfile(REPO_ROOT / "records" / "run_record.json", run / "run_record.json")
    out = tmp_path / "variant"
    shutil.copytree(VARIANT, out)  # the old variant: other weights, records and card
    before = _files(out)
    argv = ["--run", str(run), "--out", str(out), "--name", "t", "--dataset", str(tiny_dir), "--no-temperature"]

    def killed(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_model, "main", killed)
    with pytest.raises(KeyboardInterrupt):
        make_variant.main(argv)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "variant"]  # no staging folder left
    monkeypatch.undo()
    make_variant.main(argv)
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert (out / "records" / "run_record.json").read_bytes() == (run / "run_record.json").read_bytes()
    assert json.loads((out / "records" / "eval_test.json").read_text())["model"] == str(out)  # not the staging
    assert (out / "records" / "recipes_best.json").exists()  # records this run does not write are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "variant"]
