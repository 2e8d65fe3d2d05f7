"""The release at the repo root: trained with the seed's recipe, meets the target on the full MNIST test split when
evaluated from this checkout, and its card and records agree."""

import json
import os
import shutil
from pathlib import Path

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


def test_shipped_record_holds_what_each_epoch_measured():
    rows = RECORD["epochs"]
    assert [e["epoch"] for e in rows] == list(range(1, 41))
    assert all(e["lr"] > 0 and e["wall_s"] > 0 and e["steps"] == RECORD["steps_per_epoch"] for e in rows)
    # The weights changed every epoch: no two rows carry the same evaluation (the kept model's is final_eval).
    evaluations = [(e["test_loss"], e["test_accuracy"]) for e in rows]
    assert len({loss for loss, _ in evaluations}) == len(rows)
    kept = next(e for e in rows if e["epoch"] == RECORD["best_epoch"])
    assert RECORD["final_eval"]["accuracy"] == pytest.approx(kept["test_accuracy"], abs=1e-9)
    assert RECORD["best_epoch"] == max(rows, key=lambda e: e["test_accuracy"])["epoch"]
    segments = RECORD["segments"]
    assert segments[0]["start_step"] == 0 and segments[-1]["end_step"] == RECORD["global_step"] == 40 * 235
    assert RECORD["train_wall_s"] == pytest.approx(sum(s["wall_s"] for s in segments), abs=0.01)
    assert RECORD["git"]["commit"] and RECORD["git"]["dirty"] is False  # the card names this commit


def test_card_and_readme_numbers_match_the_evaluation_record():
    card = (REPO_ROOT / "model_card.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": RESULT["accuracy"], "loss": RESULT["loss"]}
    assert RESULT["num_samples"] == 10_000 and RESULT["split"] == "test"
    assert f"trained at commit `{RECORD['git']['commit'][:12]}`" in card  # which commit made the release


@pytest.mark.slow
def test_release_meets_the_target_on_the_full_test_split(mnist_dir):
    model = AutoModelForImageClassification.from_pretrained(REPO_ROOT)
    processor = AutoImageProcessor.from_pretrained(REPO_ROOT)
    result = eval_model.evaluate_model(model, processor, load_mnist(str(mnist_dir), "test"), progress=False)
    assert result["num_samples"] == 10_000
    assert result["accuracy"] >= 0.993  # the seed card's 99.3%
    assert result["accuracy"] == pytest.approx(RESULT["accuracy"], abs=1e-4)
    assert result["loss"] == pytest.approx(RESULT["loss"], rel=1e-3)


# ---- scripts.make_release: staged, evaluated as staged, moved in under a journal --------------------------------


@pytest.fixture(scope="module")
def small_run(tiny_dir, tmp_path_factory):
    from scripts import train

    out = tmp_path_factory.mktemp("run")
    train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), "--smoke", "--no-progress"])
    return out


def _snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_make_release_writes_a_complete_release_and_a_killed_one_changes_nothing(small_run, tiny_dir, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    from scripts import make_release

    root = tmp_path / "release"
    root.mkdir()
    argv = ["--run", str(small_run), "--root", str(root), "--dataset", str(tiny_dir)]
    make_release.main(argv)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "model_card.md",
                 "records/run_record.json", "records/eval_test.json", "assets/test_accuracy.png"):  # fmt: skip
        assert (root / name).is_file(), name
    result = json.loads((root / "records" / "eval_test.json").read_text())
    assert result["model"] == str(root)  # evaluated as staged, recorded under the release's name
    assert not (root / make_release.STAGING).exists() and not (root / make_release.JOURNAL).exists()
    before = _snapshot(root)

    # Killed while staging (the card fails): the release in place is untouched.
    def fail(*args, **kwargs):
        raise KeyboardInterrupt("killed while staging")

    with monkeypatch.context() as patch:
        patch.setattr(make_release.make_model_card, "main", fail)
        with pytest.raises(KeyboardInterrupt):
            make_release.main(argv)
    assert {k: v for k, v in _snapshot(root).items() if not k.startswith(make_release.STAGING)} == before

    # Killed in the middle of moving files in: the next run completes the journaled move first.
    replace, moved = make_release.os.replace, []

    def replace_then_die(src, dst):
        staged = str(dst).startswith(str(root / make_release.STAGING))  # a file written atomically while staging
        if str(dst).startswith(str(root)) and not staged and not str(dst).endswith(".tmp") and len(moved) == 2:
            raise KeyboardInterrupt("killed while moving")
        replace(src, dst)
        if not str(dst).startswith(str(root / make_release.STAGING)):
            moved.append(dst)

    with monkeypatch.context() as patch:
        patch.setattr(make_release.os, "replace", replace_then_die)
        with pytest.raises(KeyboardInterrupt):
            make_release.main(argv)
    assert (root / make_release.JOURNAL).exists()
    make_release.finish_release(root)
    assert not (root / make_release.JOURNAL).exists() and not (root / make_release.STAGING).exists()
    after = _snapshot(root)
    assert after.keys() == before.keys()
    assert after["model.safetensors"] == before["model.safetensors"]  # same run released again


def test_make_release_interrupted_or_failing_while_staging_leaves_no_staging_folder(small_run, tiny_dir, tmp_path,
                                                                                    monkeypatch):  # fmt: skip
    from scripts import make_release

    root = tmp_path / "release"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("SIGTERM while staging")

    monkeypatch.setattr(make_release.make_model_card, "main", stopped)
    with pytest.raises(KeyboardInterrupt):
        make_release.main(["--run", str(small_run), "--root", str(root), "--dataset", str(tiny_dir)])
    assert not (root / make_release.STAGING).exists()


def test_make_release_refuses_a_record_of_another_kind_and_a_root_under_a_file(small_run, tiny_dir, tmp_path,
                                                                               capsys):  # fmt: skip
    """An eval_model.py result as run_record.json was a KeyError after the evaluation; --root under a file a mkdir
    traceback."""
    from scripts import make_release

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "run_record.json").write_text(json.dumps({"accuracy": 0.99}))
    with pytest.raises(SystemExit, match="is not a run record of scripts/train.py: no epochs"):
        make_release.main(["--run", str(run), "--root", str(tmp_path / "release"), "--dataset", str(tiny_dir)])
    assert not (tmp_path / "release").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        make_release.main(["--run", str(small_run), "--root", str(tmp_path / "f" / "release")])
    assert exit_info.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [('{"runs": []}', "not a run record of scripts/train.py: no epochs"),
                                                  ('{"epochs": [', "not a run record of scripts/train.py: Expecting"),
                                                  ('{"epochs": []}', "holds no epochs")])  # fmt: skip
def test_plot_curves_refuses_a_record_of_another_kind(tmp_path, capsys, content, message):
    from scripts import plot_curves

    (tmp_path / "r.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main(["--record", str(tmp_path / "r.json"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plot_curves_refuses_a_missing_or_wrong_eval(small_run, tmp_path, capsys):
    """--eval typo.json silently left the confusion matrix out."""
    from scripts import plot_curves

    record = small_run / "run_record.json"
    for path, message in ((tmp_path / "typo.json", "no such file"), (record, "not an evaluation")):
        with pytest.raises(SystemExit) as exit_info:
            plot_curves.main(["--record", str(record), "--eval", str(path), "--out", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_local_paths_say_no_such_folder(tmp_path, tiny_dir, capsys):
    from scripts import make_release

    missing = tmp_path / "no" / "model"
    with pytest.raises(SystemExit) as exit_info:  # a usage error: one line, exit 2
        eval_model.main(["--model", str(missing), "--dataset", str(tiny_dir), "--no-progress"])
    assert exit_info.value.code == 2 and f"no such folder: {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"no such folder: {missing}"):
        make_release.main(["--run", str(missing), "--root", str(tmp_path)])


def test_an_output_in_an_unwritable_folder_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """eval_model.py --output in a read-only folder (records/ of another user's checkout) evaluated everything, then
    ended with PermissionError's traceback; now one line and exit 2 before the model loads."""
    import minivision_hf.training as training

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # as root every folder is writable: this one is not, as for any other user
    monkeypatch.setattr(training.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(SystemExit) as exit_info:
        eval_model.main(["--model", str(REPO_ROOT), "--output", str(locked / "eval.json"), "--no-progress"])
    assert exit_info.value.code == 2 and f"{locked} is not writable" in capsys.readouterr().err


def test_output_folder_names_the_folder_that_refuses_a_relative_path(tmp_path, monkeypatch):
    """A relative --output-dir is judged, and named, from the working folder; a working folder deleted under the shell
    is named as such (it said "None is not writable")."""
    import argparse

    import minivision_hf.training as training

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(training.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    monkeypatch.chdir(locked)
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{locked} is not writable$"):
        training.output_folder("runs/a")
    assert training.output_folder("../runs/a") == "../runs/a"  # tmp_path itself is writable
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(argparse.ArgumentTypeError, match="working folder it is relative to no longer exists"):
        training.output_folder("runs/a")


def test_an_unwritable_datasets_cache_is_a_usage_error_of_eval_model(tmp_path, tiny_dir, monkeypatch, capsys):
    """HF_HOME in a read-only folder: datasets caches even a local folder there, and eval_model.py said "could not
    read dataset <the fixture>" as if the dataset were the problem; now train.py's message, exit 2."""
    import datasets.config

    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "a_file" / "datasets"))
    with pytest.raises(SystemExit) as exit_info:
        eval_model.main(["--model", str(REPO_ROOT), "--dataset", str(tiny_dir), "--no-progress"])
    assert exit_info.value.code == 2 and "a_file/datasets is not writable" in capsys.readouterr().err


def test_the_default_model_outside_the_repo_is_a_usage_error(tmp_path, monkeypatch, capsys):
    """--model defaults to ".", the release only when run from the repo root: elsewhere (python /repo/scripts/x.py from
    another folder) one line and exit 2, not transformers' traceback "Unrecognized model in ."."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        eval_model.main(["--no-progress"])
    assert exit_info.value.code == 2 and f"no config.json in . ({tmp_path.resolve()})" in capsys.readouterr().err
