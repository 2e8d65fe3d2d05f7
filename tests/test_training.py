"""Training (scripts/train.py through transformers.Trainer), evaluation, the data layer and the model card."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import save_file

from minivision_hf.data import (
    BatchCollator,
    IndexDataset,
    affine_grid,
    decode_to_uint8,
    load_mnist,
    plain_transform,
    random_shift_rotate,
)
from minivision_hf.training import RECIPES, current_umask, lr_factor, process_running, replace_folder, write_json
from scripts import eval_model, make_model_card, train
from tests.conftest import FIXTURES, REPO_ROOT

TINY_ARGS = ["--max-eval-samples", "128", "--no-progress", "--save-total-limit", "3"]


@pytest.fixture(scope="module")
def smoke_run(tiny_dir, tmp_path_factory):
    """7 epochs of 8 steps (512 samples, batch 64): StepLR halves after epochs 3 and 6."""
    out = tmp_path_factory.mktemp("smoke")
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), "--epochs", "7", "--batch-size", "64",
                         *TINY_ARGS])  # fmt: skip
    return out, record


def test_smoke_run_saves_a_loadable_release(smoke_run):
    out, record = smoke_run
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_minivision.py",
                 "run_record.json"):  # fmt: skip
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    on_disk = json.loads((out / "run_record.json").read_text())
    assert on_disk["global_step"] == 7 * 8 and on_disk["steps_per_epoch"] == 8
    assert on_disk["seed"] == 42 and on_disk["versions"]["transformers"] and "commit" in on_disk["git"]
    assert [e["epoch"] for e in on_disk["epochs"]] == list(range(1, 8))
    assert all({"train_loss", "test_loss", "test_accuracy", "lr", "wall_s"} <= set(e) for e in on_disk["epochs"])
    # 512 real digits for 7 epochs: well above chance, and the loss went down
    assert on_disk["epochs"][-1]["train_loss"] < on_disk["epochs"][0]["train_loss"]
    assert on_disk["final_eval"]["accuracy"] > 0.5
    # The fast path's defaults, when the C kernels build here: the fused kernels, the second conv as Winograd on every
    # CPU (one pass with AVX-512 BF16 in bf16; the C transforms + torch.bmm in fp32 on AVX2-only CPUs, or in bf16).
    kernels = on_disk["fast_kernels"]
    assert kernels["fused_blocks"] == 2 and kernels["fast_dropouts"] == 1
    assert kernels["winograd_blocks"] == 1 and kernels["kernels_built"] or kernels["build_error"]


def test_learning_rate_halves_exactly_at_epoch_boundaries(smoke_run):
    out, record = smoke_run
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025])
    # The TensorBoard scalars Trainer logged at each epoch end: the rate that epoch's last step (1-based) used.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    lrs = {e.step: e.value for e in events.Scalars("train/learning_rate")}
    for step, lr in lrs.items():
        assert lr == pytest.approx(0.01 * 0.5 ** ((step - 1) // 24)), step
    assert sorted(lrs) == [8, 16, 24, 32, 40, 48, 56]
    assert {"eval/loss", "eval/accuracy", "train/loss"} <= set(events.Tags()["scalars"])


def test_lr_factor_shapes():
    seed, plus = RECIPES["seed"], RECIPES["plus"]
    assert [lr_factor(s, 10, seed) for s in (0, 29, 30, 59, 60)] == [1, 1, 0.5, 0.5, 0.25]
    assert lr_factor(0, 10, plus) == pytest.approx(1 / 20)  # warm-up from ~0
    assert lr_factor(19, 10, plus) == pytest.approx(1.0)
    assert lr_factor(plus.epochs * 10, 10, plus) == pytest.approx(0.0, abs=1e-9)


def test_no_winograd_keeps_pytorchs_second_conv(tiny_dir, tmp_path):
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--smoke", "--no-winograd",
                         *TINY_ARGS])  # fmt: skip
    assert record["fast_kernels"]["winograd_blocks"] == 0 and record["fast_kernels"]["fused_blocks"] == 2
    assert record["final_eval"]["accuracy"] > 0.1


def test_adamw_optimizer_trains_and_is_recorded(tiny_dir, tmp_path):
    """--optimizer adamw: AdamW with --momentum as beta1 and decoupled weight decay on weights only (not biases or
    BatchNorm), under the recipe's schedule; the run record names it and the checkpoint holds Adam's moments."""
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--smoke", "--recipe", "plus",
                         "--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.01", *TINY_ARGS])  # fmt: skip
    assert record["recipe_values"]["optimizer"] == "adamw" and record["final_eval"]["accuracy"] > 0.1
    assert record["recipe_values"]["nesterov"] is False  # plus's Nesterov is SGD's: not recorded as applied
    checkpoint = max(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert {"exp_avg", "exp_avg_sq"} <= set(state["state"][0])
    decay, no_decay = state["param_groups"]
    assert decay["betas"][0] == 0.9 and decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    with pytest.raises(SystemExit):
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "x"), "--optimizer", "lamb"])


def test_sharpness_aware_step_takes_the_gradient_at_the_worst_nearby_weights(tmp_path):
    """--sam-rho: after a training step .grad holds the gradient at w + rho * g / ||g|| (g: the gradient at w), the
    weights are w again and BatchNorm's running statistics are those of one pass over the batch."""
    from transformers import TrainingArguments

    from minivision_hf import MiniVisionConfig, MiniVisionForImageClassification
    from minivision_hf.training import MiniVisionTrainer, Recipe

    torch.manual_seed(0)
    model = MiniVisionForImageClassification(MiniVisionConfig(dropout=0.0))  # no dropout: both passes deterministic
    batch = {"pixel_values": torch.randn(16, 1, 28, 28), "labels": torch.randint(0, 10, (16,))}
    reference = MiniVisionForImageClassification(model.config).train()
    reference.load_state_dict(model.state_dict())
    loss = reference(**batch).loss
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    one_pass = {k: v.clone() for k, v in reference.state_dict().items() if "running" in k or "batches" in k}
    with torch.no_grad():
        weights = [p.clone() for p in reference.parameters()]
        for p, g in zip(reference.parameters(), grads):
            p.add_(g * 0.05 / norm)
    expected = torch.autograd.grad(reference(**batch).loss, list(reference.parameters()))

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_grad_norm=0.0)
    trainer = MiniVisionTrainer(model=model, args=args, recipe=Recipe(sam_rho=0.05))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop for each step
    trainer.training_step(model, dict(batch))
    for param, grad, weight in zip(model.parameters(), expected, weights):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(param.detach(), weight, rtol=0, atol=1e-7)
    state = model.state_dict()
    for name, value in one_pass.items():
        torch.testing.assert_close(state[name], value)


def test_resume_continues_step_and_schedule(tiny_dir, tmp_path):
    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "4", "--batch-size", "64",
              *TINY_ARGS]  # fmt: skip
    first = train.main([*common, "--max-steps", "16"])  # "interrupted" after 2 of 4 epochs
    assert first["global_step"] == 16
    resumed = train.main([*common, "--resume"])
    assert resumed["resumed"] is True
    assert resumed["global_step"] == 32
    state = json.loads(max(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                       .joinpath("trainer_state.json").read_text())  # fmt: skip
    assert state["global_step"] == 32
    logged = [e for e in state["log_history"] if "learning_rate" in e]
    assert logged[-1]["learning_rate"] == pytest.approx(0.01 * 0.5 ** ((32 - 1) // 24))
    assert all(e["grad_norm"] > 0 for e in logged)  # every epoch's log has its last step's gradient norm


def test_the_unclipped_gradient_norm_is_computed_only_for_logged_steps(tmp_path, monkeypatch):
    """max_grad_norm 0 (the recipes'): Trainer would take the gradient norm after every optimizer step; it is logged
    once an epoch, so MiniVisionTrainer computes it for an epoch's last step and the run's last only."""
    from transformers import TrainingArguments

    from minivision_hf import MiniVisionConfig, MiniVisionForImageClassification
    from minivision_hf.training import MiniVisionTrainer, Recipe

    model = MiniVisionForImageClassification(MiniVisionConfig())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_grad_norm=0.0)
    trainer = MiniVisionTrainer(model=model, args=args, recipe=Recipe())
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    computed = []
    norm = trainer.accelerator.clip_grad_norm_
    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_", lambda *a, **k: computed.append(1) or norm(*a, **k))
    trainer._steps_per_epoch, trainer.state.max_steps = 4, 10
    norms = []
    for step in range(10):
        trainer.state.global_step = step  # steps done before this one
        norms.append(trainer._get_grad_norm(model))
    assert [i for i, n in enumerate(norms) if n is not None] == [3, 7, 9] and len(computed) == 3
    expected = math.sqrt(sum(p.numel() for p in model.parameters()))
    assert float(norms[3]) == pytest.approx(expected, rel=1e-5)


def test_a_new_run_refuses_a_folder_holding_an_earlier_runs_checkpoints(smoke_run, tiny_dir, tmp_path, capsys):
    out = tmp_path / "earlier"
    shutil.copytree(smoke_run[0], out)
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(SystemExit) as refused:
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), "--smoke", "--no-progress"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "holds an earlier run's checkpoints" in err and "pass --resume" in err
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing used or deleted


def test_resume_refuses_other_values_than_the_checkpointed_run(tiny_dir, tmp_path):
    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "4", "--batch-size", "64",
              *TINY_ARGS]  # fmt: skip
    train.main([*common, "--max-steps", "8"])
    before = sorted(p.name for p in tmp_path.iterdir())
    changes = [(["--batch-size", "32"], "batch_size 64 there, 32 now"), (["--recipe", "plus"], "recipe"),
               (["--val-size", "100"], "val_size 0 there, 100 now"), (["--seed", "7"], "seed")]  # fmt: skip
    for changed, named in changes:
        refused = f"--resume: .*checkpoint-8 belongs to a run with other values .*{named}"
        with pytest.raises(SystemExit, match=refused) as exit_info:
            train.main([*common, "--resume", *changed])
        assert exit_info.value.code == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert train.main([*common, "--resume", "--bf16", "off"])["global_step"] == 32  # speed settings may change


def test_resume_identity_is_read_before_anything_is_removed_and_ignores_spelling(tiny_dir, tmp_path, monkeypatch):
    from minivision_hf.training import recipe_from_args, resume_mismatches, run_identity

    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "4", "--batch-size", "64",
              *TINY_ARGS]  # fmt: skip
    train.main([*common, "--max-steps", "8"])
    args = train.parse_args([*common, "--resume"])
    recipe = recipe_from_args(args)
    # another number of processes (torchrun): refused from the record, though the checkpoint is "incomplete" there
    checkpoint, differences = resume_mismatches(tmp_path, run_identity(args, recipe, world=2))
    assert checkpoint.name == "checkpoint-8" and differences == ["processes 1 there, 2 now"]
    assert (tmp_path / "checkpoint-8").is_dir()
    # the same dataset spelt another way is the same run
    monkeypatch.chdir(tiny_dir.parent)
    args = train.parse_args([*common, "--resume", "--dataset", f"./{tiny_dir.name}/"])
    assert resume_mismatches(tmp_path, run_identity(args, recipe_from_args(args))) == (tmp_path / "checkpoint-8", [])
    shutil.copytree(tmp_path / "checkpoint-8", tmp_path / "checkpoint-9")  # a newer checkpoint without a record
    torch.save({**torch.load(tmp_path / "checkpoint-9" / "minivision_state.pth", weights_only=True), "run": None},
               tmp_path / "checkpoint-9" / "minivision_state.pth")  # fmt: skip
    other_seed = train.parse_args([*common, "--resume", "--seed", "7"])
    _, differences = resume_mismatches(tmp_path, run_identity(other_seed, recipe_from_args(other_seed)))
    assert differences == ["seed 42 there, 7 now"]
    shutil.rmtree(tmp_path / "checkpoint-9")
    state_file = tmp_path / "checkpoint-8" / "minivision_state.pth"  # a record that kept the path as given
    state = torch.load(state_file, weights_only=True)
    state["run"]["dataset"] = tiny_dir.name
    torch.save(state, state_file)
    assert resume_mismatches(tmp_path, run_identity(args, recipe_from_args(args))) == (tmp_path / "checkpoint-8", [])


def test_resuming_a_finished_fractional_run_trains_nothing_more(tiny_dir, tmp_path):
    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "1.5", "--batch-size", "64",
              *TINY_ARGS]  # fmt: skip
    first = train.main(common)
    again = train.main([*common, "--resume"])
    assert first["global_step"] == again["global_step"] == 12
    assert again["final_eval"]["accuracy"] == first["final_eval"]["accuracy"]
    for name in ("run_record.json", "model.safetensors"):  # as if killed after the last checkpoint, before the save
        (tmp_path / name).unlink()
    saved = train.main([*common, "--resume"])
    assert saved["global_step"] == 12 and not (tmp_path / "checkpoint-13").exists()
    assert saved["final_eval"]["accuracy"] == first["final_eval"]["accuracy"]


def test_a_fractional_last_epoch_is_an_epoch_of_the_run(tiny_dir, tmp_path):
    """--epochs 1.5: the half epoch that ends the schedule is evaluated, may be the kept best, and counts for
    --target-accuracy."""
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "a"), "--epochs", "1.5",
                         "--batch-size", "64", "--best-model", "--target-accuracy", "0.999", *TINY_ARGS])  # fmt: skip
    assert [e["epoch"] for e in record["epochs"]] == [1, 2] and record["epochs"][1]["partial"] is True
    best = max(record["epochs"], key=lambda e: e["test_accuracy"])
    assert record["best_epoch"] == best["epoch"]
    assert record["final_eval"]["accuracy"] == pytest.approx(best["test_accuracy"])
    first, half = (e["test_accuracy"] for e in record["epochs"])
    again = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "b"), "--epochs", "1.5",
                        "--batch-size", "64", "--target-accuracy", str(half), *TINY_ARGS])  # fmt: skip
    assert again["target_accuracy"]["reached"] is True  # at the half epoch when the first epoch fell short
    assert again["target_accuracy"]["epoch"] == (1 if first >= half else 2)


def test_a_bad_isa_level_variable_is_one_line(tiny_dir, tmp_path, monkeypatch):
    from minivision_hf.fast import capabilities

    monkeypatch.setenv("MINIVISION_ISA_LEVEL", "bogus")
    capabilities.detect_capabilities.cache_clear()  # read again, with the variable (a raise caches nothing)
    with pytest.raises(SystemExit, match="train.py: error: MINIVISION_ISA_LEVEL='bogus': not one of"):
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "o"), "--smoke", "--no-progress"])
    assert not (tmp_path / "o").exists()


def test_conflicting_arguments_are_refused_before_anything_is_read(tiny_dir, tmp_path, capsys):
    train_file = tiny_dir / "train-00000-of-00001.parquet"
    for args, message in [
        (["--data-path", "plain", "--recipe", "plus"], "--data-path plain implements the seed's augmentation only"),
        (["--recipe", "best", "--max-train-samples", "100"], "--val-size 5000 leaves no training rows"),
        (["--dataset", str(train_file)], "is one file, one split"),
        (["--output-dir", str(train_file)], "is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as refused:
            train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "o"), "--no-progress", *args])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_split_file_is_only_its_own_split_and_labels_must_be_digits(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="holds the 'train' split"):
        load_mnist(str(tiny_dir / "train-00000-of-00001.parquet"), "test")
    assert len(load_mnist(str(tiny_dir / "test-00000-of-00001.parquet"), "test")) == 256
    plain_labels = load_mnist(str(tiny_dir), "test").cast_column("label", datasets.Value("int64"))
    shifted = plain_labels.map(lambda row: {"label": row["label"] + 5})
    shifted.to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"labels must be digits 0-9, found range 5\.\.14"):
        load_mnist(str(tmp_path), "test")
    unlabelled = plain_labels.map(lambda row, i: {"label": None if i == 3 else row["label"]}, with_indices=True)
    unlabelled.to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="1 rows have no label"):
        load_mnist(str(tmp_path), "test")
    plain_labels.to_parquet(str(tmp_path / "mnist_val.parquet"))
    assert len(load_mnist(str(tmp_path / "mnist_val.parquet"), "val")) == 256  # val, valid, validation: one split


def test_evaluate_script_on_fixture(smoke_run, tiny_dir, tmp_path):
    out, _ = smoke_run
    result = eval_model.main(["--model", str(out), "--dataset", str(tiny_dir), "--output", str(tmp_path / "e.json"),
                            "--no-progress"])  # fmt: skip
    on_disk = json.loads((tmp_path / "e.json").read_text())
    assert on_disk["accuracy"] == result["accuracy"] and on_disk["loss"] == result["loss"]
    matrix = torch.tensor(on_disk["confusion_matrix"])
    assert matrix.sum() == on_disk["num_samples"] == 256
    assert on_disk["accuracy"] == pytest.approx(matrix.trace().item() / 256)
    assert on_disk["errors"] == 256 - matrix.trace().item()
    assert set(on_disk["per_class_accuracy"]) == {str(i) for i in range(10)}


def test_model_card_is_generated_from_the_records(smoke_run, tiny_dir, tmp_path):
    out, _ = smoke_run
    records = tmp_path / "records"
    records.mkdir()
    (records / "run_record.json").write_text((out / "run_record.json").read_text())
    eval_model.main(["--model", str(out), "--dataset", str(tiny_dir), "--output", str(records / "eval_test.json"),
                   "--no-progress"])  # fmt: skip
    result = json.loads((records / "eval_test.json").read_text())
    card = make_model_card.main(["--records", str(records), "--output", str(tmp_path / "card.md")]).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "mit" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-classification" and meta["datasets"] == ["ylecun/mnist"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"accuracy": result["accuracy"], "loss": result["loss"]}
    assert f"{result['accuracy']:.2%}" in card and f"{result['loss']:.4f}" in card
    assert "| Conv Block 1 | 1 | 32 | 3 | 1 | 1 | ReLU | MaxPool(2), BatchNorm |" in card
    assert "revision" in card and "trust_remote_code=True" in card and "lecun1998gradient" in card


def test_bad_dataset_paths_and_schemas(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist("./no/such/mnist.parquet")
    wrong_columns = tmp_path / "wrong_columns.parquet"
    datasets.Dataset.from_dict({"img": [1, 2], "y": [0, 1]}).to_parquet(wrong_columns)
    with pytest.raises(ValueError, match="'image' column"):
        load_mnist(str(wrong_columns), "train")
    five_classes = tmp_path / "five"
    five_classes.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=5)})
    from PIL import Image

    ds = datasets.Dataset.from_dict({"image": [Image.new("L", (28, 28))], "label": [1]}, features=features)
    ds.to_parquet(five_classes / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="10 classes"):
        load_mnist(str(five_classes), "train")
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_mnist(str(five_classes), "validation")
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match="could not read"):
        load_mnist(str(not_parquet))


def test_train_script_reports_bad_dataset(tmp_path):
    """A missing path, a folder that is not MNIST, a split it lacks: one line naming the problem, not a traceback,
    and nothing written."""
    (tmp_path / "other").mkdir()
    pd_rows = {"text": ["a", "b"], "label": [0, 1]}
    datasets.Dataset.from_dict(pd_rows).to_parquet(str(tmp_path / "other" / "train-00000-of-00001.parquet"))
    for dataset, extra, match in [
        (tmp_path / "nowhere", [], "does not exist"),
        (tmp_path / "other", [], "expected an 'image' column"),
        (FIXTURES / "mnist_tiny", ["--eval-split", "validation"], "has no split 'validation'"),
    ]:
        with pytest.raises(SystemExit, match=f"train.py: error: .*{match}") as refused:
            train.main(["--dataset", str(dataset), "--output-dir", str(tmp_path / "o"), "--smoke", *extra])
        assert refused.value.code == 2  # a usage error, as argparse's own: status 2
        assert not (tmp_path / "o").exists()


def test_batched_augmentation_matches_the_seed_distribution(tiny_test):
    images, _ = decode_to_uint8(tiny_test)
    x = images[:64].float() / 255
    assert torch.equal(random_shift_rotate(x, max_shift=0, max_degrees=0.0), x)  # identity when both are off
    g = torch.Generator().manual_seed(0)
    shifted = random_shift_rotate(x, max_shift=2, max_degrees=0.0, generator=g)
    # integer shifts: pixel values are preserved exactly, only moved (MNIST ink never reaches within 2 px of the edge
    # for most digits, so mass is kept); the centre of mass moves by at most 2 px per axis
    assert torch.equal(torch.sort(shifted.flatten(1)).values[:, -50:], torch.sort(x.flatten(1)).values[:, -50:])
    rows = torch.arange(28.0)
    com = lambda t: (t.sum(-1) * rows).sum(-1) / t.sum((-1, -2))  # noqa: E731
    moved = (com(shifted) - com(x)).abs()
    assert moved.max() <= 2.0 + 1e-4 and (moved > 0.5).any()
    rotated = random_shift_rotate(x, max_shift=0, max_degrees=10.0, generator=g)
    assert not torch.equal(rotated, x)
    assert torch.allclose(rotated.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=0.12)  # nearest-neighbour rotation


def test_affine_grid_matches_torch():
    theta = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0))
    for h, w in ((28, 28), (3, 5)):
        expected = torch.nn.functional.affine_grid(theta, [16, 1, h, w], align_corners=False)
        assert torch.allclose(affine_grid(theta, h, w), expected, atol=1e-6)


def test_index_dataset_batched_fetch_matches_per_item(tiny_test):
    images, labels = decode_to_uint8(tiny_test)
    collator = BatchCollator(images, labels, augment_below=0)
    data = IndexDataset(100, start=20)
    loader = torch.utils.data.DataLoader(data, batch_size=32, collate_fn=collator)  # uses __getitems__
    batches = list(loader)
    assert [len(b["labels"]) for b in batches] == [32, 32, 32, 4]
    assert torch.equal(batches[1]["labels"], labels[52:84])
    assert data.__getitems__([0, 5]) == [data[0], data[5]] == [20, 25]
    with pytest.raises(IndexError):
        data.__getitems__([99, 100])


def test_collator_and_plain_transform_agree_without_augmentation(tiny_test):
    images, labels = decode_to_uint8(tiny_test)
    batch = BatchCollator(images, labels)(list(range(8)))
    plain = plain_transform(augment=False)(tiny_test[:8])
    assert torch.equal(batch["pixel_values"], torch.stack(plain["pixel_values"]))
    assert batch["labels"].tolist() == plain["labels"]
    augmented = plain_transform(augment=True)(tiny_test[:8])
    assert torch.stack(augmented["pixel_values"]).shape == (8, 1, 28, 28)
    assert math.isfinite(float(torch.stack(augmented["pixel_values"]).sum()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): the dataset kept on the GPU is checked only "
    "where one is present"))])  # fmt: skip
def test_collator_on_a_device_gives_the_same_batches(tiny_test, device):
    """The fast path keeps the dataset on Trainer's device (a GPU: no copy per batch); the augmentation draws stay on
    the CPU generator, so the batches equal the host-memory collator's (on a GPU, but for nearest-pixel ties), and no
    augmentation stream changes."""
    images, labels = decode_to_uint8(tiny_test)
    host = BatchCollator(images, labels, augment_below=64, max_degrees=12.0, scale=(0.9, 1.1), seed=3)
    resident = BatchCollator(images, labels, augment_below=64, max_degrees=12.0, scale=(0.9, 1.1), seed=3).to(device)
    assert resident.images.device.type == device
    for rows in (list(range(0, 32)), list(range(64, 96))):  # augmented training rows, then evaluation rows
        a, b = host(rows), resident(rows)
        assert b["pixel_values"].device.type == device and b["labels"].device.type == device
        assert torch.equal(a["labels"], b["labels"].cpu())
        differ = ((a["pixel_values"] - b["pixel_values"].cpu()).abs() > 1e-4).float().mean()
        assert differ <= (0.0 if device == "cpu" else 0.01)  # a GPU may round a nearest-pixel tie the other way
    assert torch.equal(host.generator.get_state(), resident.generator.get_state())


def test_trainer_keeps_the_fast_path_dataset_where_the_model_is(tiny_dir, tmp_path):
    """build_trainer moves the fast path's uint8 dataset to the device Trainer put the model on (a GPU where there is
    one; Trainer's choice, not a second guess), so batches are made there."""
    from minivision_hf import MiniVisionImageProcessor
    from minivision_hf.training import build_data, build_model, build_trainer, recipe_from_args

    args = train.parse_args(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--smoke"])
    recipe = recipe_from_args(args)
    data = build_data(args, recipe)
    model, _ = build_model(args, use_bf16=False)
    trainer = build_trainer(args, recipe, model, MiniVisionImageProcessor(), data, world=1, use_bf16=False)
    device = next(trainer.model.parameters()).device
    assert data.collator.collator.images.device == device == trainer.args.device
    assert trainer.args.dataloader_pin_memory is False  # nothing to pin: the batches are made on the device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): training with the dataset "
                    "on the GPU, and resuming it, is checked only where one is present")  # fmt: skip
def test_fast_path_trains_and_resumes_on_cuda(tiny_dir, tmp_path):
    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "2", "--batch-size", "64",
              *TINY_ARGS]  # fmt: skip
    first = train.main([*common, "--max-steps", "8"])
    resumed = train.main([*common, "--resume"])
    assert first["global_step"] == 8 and resumed["resumed"] and resumed["global_step"] > 8
    assert resumed["hardware"]["gpu"] and resumed["final_eval"]["accuracy"] > 0.1


def test_compare_recipes_smoke(tiny_dir, tmp_path):
    from scripts import compare_recipes

    summary = compare_recipes.main(["--smoke", "--recipes", "seed", "plus", "--seeds", "1", "2", "--dataset",
                                    str(tiny_dir), "--work-dir", str(tmp_path / "w"), "--output",
                                    str(tmp_path / "r.json")])  # fmt: skip
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert set(on_disk["recipes"]) == {"seed", "plus"}
    for s in summary["recipes"].values():
        assert len(s["accuracies"]) == 2 and 0 <= s["accuracy_mean"] <= 1
        assert s["accuracy_mean"] == pytest.approx(sum(s["accuracies"]) / 2)
    assert [r["seed"] for r in on_disk["runs"]] == [1, 2, 1, 2]
    merged = compare_recipes.main(["--merge", str(tmp_path / "r.json"), str(tmp_path / "r.json"), "--output",
                                   str(tmp_path / "m.json")])  # fmt: skip
    assert set(merged["recipes"]) == {"seed", "plus"} and len(merged["runs"]) == 8
    # rerun into the same work dir: the finished runs are reused, not retrained, nor refused
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("model.safetensors")}
    again = compare_recipes.main(["--smoke", "--recipes", "seed", "--seeds", "1", "--dataset", str(tiny_dir),
                                  "--work-dir", str(tmp_path / "w"), "--output", str(tmp_path / "2.json")])  # fmt: skip
    assert again["recipes"]["seed"]["accuracies"] == summary["recipes"]["seed"]["accuracies"][:1]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("model.safetensors")} == stamps
    shorter = ["--smoke", "--seeds", "1", "--dataset", str(tiny_dir), "--work-dir", str(tmp_path / "w"), "--output",
               str(tmp_path / "3.json"), "--variant", "seed-fast", "seed", "--max-steps 1"]  # fmt: skip
    with pytest.raises(SystemExit, match="past this run's 1 steps"):
        compare_recipes.main(shorter)  # a finished run is reused only for the same stopping point too
    with pytest.raises(SystemExit, match="belongs to a run with other values"):  # other values: a new --work-dir
        compare_recipes.main(["--smoke", "--recipes", "seed", "--seeds", "1", "--epochs", "1", "--dataset",
                              str(tiny_dir), "--work-dir", str(tmp_path / "w"), "--output", str(tmp_path / "r3.json")])


# ---- kills, resumes, refusals -------------------------------------------------------------------------------------

RESUME_ARGS = ["--epochs", "3", "--batch-size", "64", "--max-eval-samples", "128", "--no-progress", "--no-best-model",
               "--save-total-limit", "2"]  # fmt: skip  # 8 steps per epoch; the last weights kept, for exact comparison

# Runs scripts.train in a fresh process that SIGKILLs itself at a chosen moment (a real kill: no cleanup, no finally).
KILL_RUNNER = r"""
import os, signal, sys
from minivision_hf import training
from scripts import train

point, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "step":  # inside optimizer step `at` (mid-epoch): the last checkpoint is the previous epoch's
    step = training.MiniVisionTrainer.training_step
    def training_step(self, *a, **k):
        if self.state.global_step + 1 == at:
            die()
        return step(self, *a, **k)
    training.MiniVisionTrainer.training_step = training_step
elif point == "checkpoint":  # checkpoint-`at` written by Trainer but not committed (minivision_state.pth missing)
    commit = training.MiniVisionTrainer.commit_checkpoint
    def commit_checkpoint(self, folder):
        if self.state.global_step == at:
            die()
        return commit(self, folder)
    training.MiniVisionTrainer.commit_checkpoint = commit_checkpoint
elif point == "final-save":  # the kept model half-written: weights and processor staged, run_record.json not yet
    training.write_json = lambda *a, **k: die()
elif point == "swap":  # between the two renames of the fallback swap (no renameat2): the folder is briefly absent
    training._exchange = lambda a, b: False
    rename = os.rename
    def killing_rename(src, dst):
        rename(src, dst)
        if str(dst).endswith(".previous"):
            die()
    training.os.rename = killing_rename
train.main(argv)
"""


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _measured(record: dict) -> list[tuple]:
    return [(e["epoch"], e["train_loss"], e["test_loss"], e["test_accuracy"], e["lr"], e["steps"]) for e in
            record["epochs"]]  # fmt: skip


def _killed_run(point: str, at: int, out: Path, tiny_dir: Path) -> None:
    argv = ["--dataset", str(tiny_dir), "--output-dir", str(out), *RESUME_ARGS]
    proc = subprocess.run([sys.executable, "-c", KILL_RUNNER, point, str(at), *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), *RESUME_ARGS])


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, at, resumes_from",
    [
        ("step", 12, 8),  # killed mid-epoch 2: epoch 1's checkpoint
        ("checkpoint", 16, 8),  # killed while saving epoch 2's checkpoint: that one is incomplete, epoch 1's is used
        ("final-save", 0, 24),  # killed while writing the kept model: every epoch is in checkpoint-24
        ("swap", 0, 24),  # killed between the fallback swap's renames: the staged (complete) model is moved in
    ],
)
def test_killed_and_resumed_run_equals_the_uninterrupted_one(point, at, resumes_from, uninterrupted, tiny_dir,
                                                             tmp_path):  # fmt: skip
    reference_dir, reference = uninterrupted
    out = tmp_path / "run"
    _killed_run(point, at, out, tiny_dir)
    # What a kill leaves: no half-written model folder. (The fallback swap's window leaves the complete folders
    # beside it, which the next run puts in place.)
    if point == "swap":
        assert not out.exists() and (tmp_path / ".run.previous").is_dir() and (tmp_path / ".run.staging").is_dir()
    else:
        assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
        assert (out / f"checkpoint-{resumes_from}" / "minivision_state.pth").exists()
    if point == "checkpoint":
        assert not (out / "checkpoint-16" / "minivision_state.pth").exists()

    resumed = train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), *RESUME_ARGS, "--resume"])
    assert _measured(resumed) == _measured(reference)  # same per-epoch metrics, to the last bit
    weights, expected = _weights(out), _weights(reference_dir)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    # A whole record: every epoch's lr and wall time; wall time summed over the segments; images/s over the epochs'
    # training time; the segments, the first ending at the checkpoint the second started from.
    assert all(e["wall_s"] > 0 and e["lr"] == 0.01 for e in resumed["epochs"])
    segments = resumed["segments"]
    # The swap's kill came after the whole run was saved: the resume finds it finished and trains nothing more.
    finished = point == "swap"
    spans = [(0, 24)] if finished else [(0, resumes_from), (resumes_from, 24)]
    assert [(s["start_step"], s["end_step"]) for s in segments] == spans
    assert resumed["train_wall_s"] == pytest.approx(sum(s["wall_s"] for s in segments), abs=0.01)
    train_s = sum(e["wall_s"] for e in resumed["epochs"])
    assert resumed["train_images_per_s"] == pytest.approx(3 * 512 / train_s, rel=1e-3)
    assert resumed["resumed"] is not finished and resumed["global_step"] == 24
    assert json.loads((out / "run_record.json").read_text())["epochs"] == resumed["epochs"]
    assert not list(tmp_path.glob(".run.*"))  # no staging or previous folder left beside it
    # TensorBoard shows one run: what the killed segment logged past its checkpoint is hidden, nothing else is.
    curves = _tensorboard_curves(out)
    assert curves == _tensorboard_curves(reference_dir) and len(curves["eval/accuracy"]) == 3


def _tensorboard_curves(run: Path) -> dict:
    """{tag: [(step, value), ...]} of the per-epoch curves as TensorBoard shows a run's event files (orphaned points
    purged). Left out: timings, and the summary Trainer logs at the end of each train() call (its train_loss is the
    mean over that call's steps, so a resumed run's differs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=True).Reload()
    tags = ("train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "eval/accuracy")
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in tags}  # plotted by step


def test_resume_inside_an_epoch_is_exact(uninterrupted, tiny_dir, tmp_path):
    """--max-steps stops inside epoch 2 (a checkpoint after an evaluation there); the resume continues that epoch
    with the same batches, augmentations and dropout masks."""
    reference_dir, reference = uninterrupted
    common = ["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), *RESUME_ARGS]
    stopped = train.main([*common, "--max-steps", "12"])
    assert stopped["epochs"][-1]["partial"] is True and stopped["epochs"][-1]["steps"] == 4
    resumed = train.main([*common, "--resume"])
    weights, expected = _weights(tmp_path), _weights(reference_dir)
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    for got, want in zip(_measured(resumed), _measured(reference)):
        # epoch 2's train loss is the mean of two logged means (steps 9-12, 13-16): equal to float rounding
        assert got[0] == want[0] and got[2:] == want[2:] and got[1] == pytest.approx(want[1], rel=1e-6)
    assert [s["end_step"] for s in resumed["segments"]] == [12, 24]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs 0.0"),
        (["--epochs", "-1"], "--epochs -1.0"),
        (["--lr", "nan"], "--lr nan"),
        (["--lr", "inf"], "--lr inf"),
        (["--lr", "0"], "--lr 0.0"),
        (["--grad-accum", "0"], "--grad-accum 0"),
        (["--batch-size", "100", "--grad-accum", "3"], "divisible"),
        (["--momentum", "1.5"], "--momentum 1.5"),
        (["--max-steps", "0"], "--max-steps 0"),
        (["--target-accuracy", "1.2"], "--target-accuracy 1.2"),
        (["--sam-rho", "-0.1"], "--sam-rho -0.1"),
        (["--sam-rho", "0.05", "--grad-accum", "2"], "--sam-rho 0.05 needs a whole batch"),
    ],
)
def test_arguments_that_cannot_train_are_refused_before_anything_is_written(flags, message, smoke_run, tiny_dir,
                                                                            tmp_path, capsys):  # fmt: skip
    trained, _ = smoke_run
    before = {p.relative_to(trained): p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(trained), *TINY_ARGS, *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    after = {p.relative_to(trained): p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    assert after == before  # the trained folder is byte-identical


def test_non_finite_loss_stops_naming_the_step_and_saves_nothing_over_the_folder(tiny_dir, tmp_path, monkeypatch):
    """(A folder that holds a saved model is refused before training: the folder here holds a user's file.)"""
    from minivision_hf import training

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    compute_loss = training.MiniVisionTrainer.compute_loss

    def nan_at_step_11(self, model, inputs, *args, **kwargs):  # an injected fault: the 11th step's loss is NaN
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if model.training and self.state.global_step + 1 == 11 else loss

    monkeypatch.setattr(training.MiniVisionTrainer, "compute_loss", nan_at_step_11)
    with pytest.raises(SystemExit, match="non-finite training loss .* at optimizer step 11 "):
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(out), "--epochs", "3", "--batch-size", "64",
                    *TINY_ARGS])  # fmt: skip
    assert not any((out / name).exists() for name in ("model.safetensors", "config.json", "run_record.json"))
    assert (out / "notes.txt").read_text() == "the user's"  # (its TensorBoard events and checkpoints stay, to look at)


def test_target_accuracy_stops_at_the_first_epoch_that_reaches_it(uninterrupted, tiny_dir, tmp_path):
    _, reference = uninterrupted
    accuracies = [e["test_accuracy"] for e in reference["epochs"]]
    target = accuracies[1]  # reached at epoch 2 at the latest (first at the first epoch with accuracy >= it)
    first = next(i for i, a in enumerate(accuracies) if a >= target) + 1
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), *RESUME_ARGS,
                         "--target-accuracy", str(target)])  # fmt: skip
    reached = record["target_accuracy"]
    assert reached["reached"] is True and reached["epoch"] == first == len(record["epochs"])
    assert reached["step"] == record["global_step"] == 8 * first
    rounding = 5e-4 * (len(record["epochs"]) + 1) + 1e-9  # each epoch's wall_s and train_s are rounded to 1 ms
    assert reached["train_s"] == pytest.approx(sum(e["wall_s"] for e in record["epochs"]), abs=rounding)
    assert 0 < reached["train_s"] <= reached["wall_s"] <= record["train_wall_s"] + 1e-3
    assert _measured(record) == _measured(reference)[:first]  # the same epochs as the full run, then a stop
    # A resume of a run that stopped at its target trains no further.
    again = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), *RESUME_ARGS, "--resume",
                        "--target-accuracy", str(target)])  # fmt: skip
    assert again["global_step"] == record["global_step"] and again["target_accuracy"] == reached
    unreachable = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "u"), "--smoke",
                              "--target-accuracy", "1.0", *TINY_ARGS])  # fmt: skip
    assert unreachable["target_accuracy"] == {"target": 1.0, "reached": False}
    assert len(unreachable["epochs"]) == 2  # trained every epoch


def test_kept_model_evaluation_is_not_written_over_an_epoch_row(tiny_dir, tmp_path):
    """The best-model run: the last row holds the last epoch's own evaluation, the kept model's is `final_eval`."""
    record = train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path), "--epochs", "4",
                         "--batch-size", "64", "--lr", "0.2", *TINY_ARGS])  # fmt: skip
    rows = record["epochs"]
    best = next(e for e in rows if e["epoch"] == record["best_epoch"])
    assert record["final_eval"]["accuracy"] == pytest.approx(best["test_accuracy"])
    for a, b in zip(rows, rows[1:]):  # the model changed between epochs: no two rows carry the same evaluation
        assert (a["test_loss"], a["test_accuracy"]) != (b["test_loss"], b["test_accuracy"])


# ---- datasets and folders users bring --------------------------------------------------------------------------


def test_digit_labels_are_read_by_name_whatever_their_order_or_type(tiny_dir, tmp_path):
    """A ClassLabel naming the digits in another order (index i is digit names[i]) and a column of digit strings give
    the digits' values, not their indices: the model's id2label is 0..9 in order."""
    reference = load_mnist(str(tiny_dir), "test")
    names = [str(9 - i) for i in range(10)]
    permuted = reference.map(lambda row: {"label": 9 - row["label"]})
    permuted = permuted.cast_column("label", datasets.ClassLabel(names=names))
    as_strings = reference.cast_column("label", datasets.Value("string"))
    for name, ds in [("permuted", permuted), ("strings", as_strings)]:
        (tmp_path / name).mkdir()
        ds.to_parquet(str(tmp_path / name / "test-00000-of-00001.parquet"))
        assert load_mnist(str(tmp_path / name), "test")["label"] == reference["label"], name
    datasets.Dataset.from_dict({"image": reference["image"][:2], "label": ["1", "one"]}).to_parquet(
        str(tmp_path / "words-test.parquet"))  # fmt: skip
    with pytest.raises(ValueError, match="'label' strings must be the digits"):
        load_mnist(str(tmp_path / "words-test.parquet"), "test")


def test_the_legacy_mnist_id_loads_the_hub_dataset_not_a_cached_folder_of_that_name(monkeypatch):
    """Offline, datasets answers a one-word id from its cache under that name, where it also caches every local folder
    called `mnist` (the latest wins): "mnist" must mean ylecun/mnist."""
    asked = []

    def load_dataset(path, *args, **kwargs):
        asked.append(path)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(REPO_ROOT)  # no folder named mnist here
    with pytest.raises(ConnectionError, match="--dataset ../shared/data/mnist"):
        load_mnist("mnist")
    assert asked == ["ylecun/mnist"]


def test_one_split_for_training_and_evaluation_is_refused(tiny_dir, tmp_path, capsys):
    """--train-split test (the default --eval-split) or --eval-split train would report training rows as a test."""
    for flags in (["--train-split", "test"], ["--eval-split", "train"], ["--train-split", "val", "--eval-split",
                                                                         "validation"]):  # fmt: skip
        with pytest.raises(SystemExit) as refused:
            train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "o"), "--smoke", *flags])
        assert refused.value.code == 2 and "are one split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_parent_and_caches_are_refused_before_training(tiny_dir, tmp_path, capsys, monkeypatch):
    """The kept model is staged beside --output-dir: a run whose parent folder is read-only (a mount point, another
    user's folder) trained to the end and then failed with a traceback. An HF_HOME that cannot be written failed as
    'could not fetch from the Hub' for a local folder, or with evaluate's traceback."""
    import os

    import datasets.config

    import minivision_hf.training as training

    locked = tmp_path / "locked"
    (locked / "run").mkdir(parents=True)  # writable itself, in a read-only parent
    real_access = os.access
    monkeypatch.setattr(training.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(SystemExit) as refused:
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(locked / "run"), "--smoke"])
    assert refused.value.code == 2 and "or its parent folder is not writable" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "a_file" / "datasets"))
    with pytest.raises(SystemExit) as refused:
        train.main(["--dataset", str(tiny_dir), "--output-dir", str(tmp_path / "o"), "--smoke"])
    assert refused.value.code == 2 and "a_file/datasets is not writable" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "locked"] and not any((locked / "run").iterdir())


def test_a_tilde_output_dir_is_one_folder_in_the_home(tiny_dir, tmp_path, monkeypatch):
    """A quoted `~/run` (or `--output-dir=~/run`): Trainer expanded it for the checkpoints, the final save wrote a
    literal ./~/run; a --resume there found no checkpoint."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = train.parse_args(["--dataset", str(tiny_dir), "--output-dir", "~/run", "--smoke"])
    assert args.output_dir == str(tmp_path / "home" / "run")


def test_training_rows_without_every_digit_are_named(tiny_dir, tmp_path, capsys):
    """A split of one class trained to 100% 'test accuracy' (on that class) without a word."""
    from types import SimpleNamespace

    from minivision_hf.training import build_data

    for split in ("train", "test"):
        threes = load_mnist(str(tiny_dir), split).filter(lambda row: row["label"] == 3)
        threes.to_parquet(str(tmp_path / f"{split}-00000-of-00001.parquet"))
    args = SimpleNamespace(dataset=str(tmp_path), train_split="train", eval_split="test", max_train_samples=None,
                           max_eval_samples=None, data_path="fast", channels_last=False, seed=0, val_seed=0)
    build_data(args, RECIPES["seed"])
    assert "hold only the digits [3]: the model will not learn the others" in capsys.readouterr().out
    args.dataset = str(tiny_dir)
    build_data(args, RECIPES["seed"])
    assert "hold only" not in capsys.readouterr().out


def test_bf16_on_where_it_is_emulated_says_so(tiny_dir, tmp_path, monkeypatch, capsys):
    """`--bf16 on` on a machine without bf16 hardware (an AVX2-only CPU) trains as asked, but says it is emulated and
    what `auto` would do (it ran silently ~10x slower); `auto` there trains in fp32 without a note."""
    monkeypatch.setattr(train, "bf16_supported", lambda: False)
    common = ["--dataset", str(tiny_dir), "--smoke", "--max-steps", "1", "--no-progress"]
    record = train.main([*common, "--output-dir", str(tmp_path / "on"), "--bf16", "on"])
    err = capsys.readouterr().err
    assert record["bf16"] and "no bf16 hardware" in err and "--bf16 auto trains in fp32 here" in err
    record = train.main([*common, "--output-dir", str(tmp_path / "auto")])
    assert not record["bf16"] and "no bf16 hardware" not in capsys.readouterr().err


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_a_saved_model_folder_follows_the_umask(tmp_path, umask):
    """safetensors writes model.safetensors 0600 whatever the umask: the final model (replace_folder: train.py,
    make_variant.py, export_onnx.py) was unreadable to the group under umask 002, and to everyone else under 022."""
    model = torch.nn.Linear(2, 2)
    previous = os.umask(umask)
    try:
        replace_folder(tmp_path / "model", lambda folder: (save_file(model.state_dict(), folder / "model.safetensors"),
                                                          write_json(folder / "run_record.json", {})))  # fmt: skip
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert modes == {"model.safetensors": 0o666 & ~umask, "run_record.json": 0o666 & ~umask}


def test_checkpoints_follow_the_umask_too(uninterrupted):
    """Trainer's checkpoint-*/model.safetensors came out 0600 (safetensors' private temporary file), unlike every other
    file of the checkpoint: a resume or an export by another user of the group failed to read it."""
    out, _ = uninterrupted
    umask = current_umask()
    files = [p for folder in out.glob("checkpoint-*") for p in folder.iterdir() if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert {p.name: p.stat().st_mode & 0o777 for p in files if p.stat().st_mode & 0o777 != 0o666 & ~umask} == {}


def test_the_umask_is_read_without_changing_it_and_windows_keeps_temporary_files(monkeypatch):
    """current_umask reads /proc/self/status where there is one (setting the umask to read it gave other threads'
    files umask 0's modes for an instant); on Windows os.kill(pid, 0) sends CTRL_C_EVENT, so no process is taken for
    ended there (a killed writer's temporary file is kept rather than another's removed)."""
    previous = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(os, "umask", lambda *a: calls.append(a) or 0o027)
        assert current_umask() == 0o027 and (calls == [] or not Path("/proc/self/status").exists())
    finally:
        monkeypatch.undo()
        os.umask(previous)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not process_running(int(ended.stdout))
    monkeypatch.setattr(os, "name", "nt")
    assert process_running(int(ended.stdout))
