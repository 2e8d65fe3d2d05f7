"""Scripts at the edges of their inputs: a usage mistake is a one-line argparse error (exit 2), never a traceback or a
silently replaced value, and what a script writes says what it did (the opset written, the images evaluated, the
variant whose numbers a card shows, code files that resolve where the release lands). Fast: the tiny fixture, tiny
models, argument parsing."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import minivision_hf as mv
import onnx
from minivision_hf import benchmarking as bench
from minivision_hf import onnx_utils
from minivision_hf.training import EpochRecorder
from scripts import benchmark, eval_model, export_onnx, make_model_card, make_release
from tests.conftest import FIXTURES, REPO_ROOT, run_fresh


def _usage_error(parse_args, argv: list[str], capsys) -> str:
    """argparse's refusal of `argv`: exit status 2 and the message on stderr (returned)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2, argv
    err = capsys.readouterr().err
    assert "error:" in err, argv
    return err


# ---- eval_model ---------------------------------------------------------------------------------------------------


def test_eval_of_a_few_images_prints_a_dash_for_classes_without_rows_and_writes_the_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    eval_model.main(["--model", str(REPO_ROOT), "--dataset", str(tiny_dir), "--max-samples", "3", "--no-progress",
                     "--output", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["num_samples"] == 3
    empty = [label for label, acc in result["per_class_accuracy"].items() if acc is None]
    assert len(empty) >= 7  # 3 images: at most 3 classes have rows
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()}
    for label in empty:
        assert rows[label].rstrip().endswith("   -"), rows[label]


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--batch-size", "-5"], ["--max-samples", "0"]])
def test_eval_refuses_empty_batches_and_samples(argv, capsys):
    assert "must be a positive int" in _usage_error(eval_model.parse_args, argv, capsys)


def test_eval_usage_error_is_one_line_without_a_traceback():
    run = subprocess.run([sys.executable, "-m", "scripts.eval_model", "--batch-size", "0"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "argument --batch-size: must be a positive int, got 0" in run.stderr


# ---- benchmark ----------------------------------------------------------------------------------------------------


def test_benchmark_warmup_matches_the_training_recorder():
    """MIN_TRAIN_STEPS is the fewest steps whose run records a step gap (the steady images/s): replay the recorder."""
    assert EpochRecorder().warmup == bench.TRAIN_WARMUP_STEPS

    def gaps(steps: int) -> int:
        recorder, state = EpochRecorder(), SimpleNamespace(global_step=0)
        recorder.on_train_begin(None, state, None)
        for step in range(1, steps + 1):
            state.global_step = step
            recorder.on_step_end(None, state, None)
        return len(recorder.step_gaps)

    assert gaps(bench.MIN_TRAIN_STEPS - 1) == 0 and gaps(bench.MIN_TRAIN_STEPS) == 1


@pytest.mark.parametrize("steps", ["3", "6"])  # 6 = MIN_TRAIN_STEPS - 1, the most that still times no step
def test_benchmark_refuses_train_steps_that_leave_no_timed_step(steps, capsys):
    err = _usage_error(benchmark.parse_args, ["--quick", "--train-steps", steps], capsys)
    assert "leaves no timed step" in err and f"at least {bench.MIN_TRAIN_STEPS}" in err


@pytest.mark.parametrize("argv", [["--train-steps", "0"], ["--train-steps", "-1"], ["--time-s", "0"],
                                  ["--time-s", "-0.5"], ["--train-rounds", "0"], ["--eval-samples", "0"],
                                  ["--pipeline-calls", "0"], ["--peak-sizes", "0"]])  # fmt: skip
def test_benchmark_refuses_zero_and_negative_values_instead_of_replacing_them(argv, capsys):
    assert "must be a positive" in _usage_error(benchmark.parse_args, ["--quick", *argv], capsys)


def test_benchmark_defaults_apply_only_to_absent_flags():
    quick, full = benchmark.parse_args(["--quick"]), benchmark.parse_args([])
    assert (quick.train_steps, quick.time_s, quick.train_rounds) == (12, 0.25, 1)
    assert (full.train_steps, full.time_s, full.train_rounds) == (60, 2.0, 5)
    given = benchmark.parse_args(["--quick", "--train-steps", str(bench.MIN_TRAIN_STEPS), "--time-s", "0.01"])
    assert (given.train_steps, given.time_s) == (bench.MIN_TRAIN_STEPS, 0.01)


def test_training_speed_names_a_run_that_timed_no_step(monkeypatch):
    """Past the parser (a library call): a run without a timed step is a clear error, not a format of None."""
    record = {"steady_images_per_s": None, "global_step": 3}
    monkeypatch.setattr(bench, "train_run", lambda *args, **kwargs: record)
    with pytest.raises(RuntimeError, match="timed no step"):
        bench.training_speed("unused", 3, 1, 32, None, 1, {"fp32": None, "bf16": None})


# ---- export_onnx --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["10", "17", "newest + 1"])
def test_export_refuses_opsets_it_would_not_write(opset, capsys):
    if opset == "newest + 1":
        opset = str(onnx_utils.max_opset() + 1)
    err = _usage_error(export_onnx.parse_args, ["--opset", opset], capsys)
    assert f"{onnx_utils.MIN_OPSET} to {onnx_utils.max_opset()}" in err
    assert export_onnx.parse_args(["--opset", str(onnx_utils.MIN_OPSET)]).opset == onnx_utils.MIN_OPSET


@pytest.mark.parametrize("argv", [["--min-agreement", "2"], ["--min-agreement", "nan"], ["--max-accuracy-drop", "-0.1"],
                                  ["--max-accuracy-drop", "nan"]])  # fmt: skip
def test_export_refuses_check_limits_no_share_can_meet(argv, capsys):
    """--min-agreement 2 exported, quantised and timed every scheme (minutes on MNIST), then failed its check with a
    traceback; a NaN limit let every scheme pass or none."""
    err = _usage_error(export_onnx.parse_args, ["--model", str(REPO_ROOT), *argv], capsys)
    assert f"argument {argv[0]}: must be in [0, 1], got {argv[1]}" in err


def _small_model() -> mv.MiniVisionForImageClassification:
    torch.manual_seed(0)
    return mv.MiniVisionForImageClassification(mv.MiniVisionConfig(conv_channels=[4, 8, 8], hidden_size=16)).eval()


def test_export_writes_the_opset_asked_or_raises(tmp_path):
    path = onnx_utils.export_onnx(_small_model(), tmp_path / "m19.onnx", 19)
    assert onnx_utils.written_opset(path) == 19
    # The exporter quietly falls back to 18 for an opset it cannot convert to; export_onnx must not.
    with pytest.raises(ValueError, match="wrote opset 18"):
        onnx_utils.export_onnx(_small_model(), tmp_path / "m30.onnx", onnx.defs.onnx_opset_version() + 1)
    assert not (tmp_path / "m30.onnx").exists()


def test_the_newest_opset_accepted_gives_files_onnx_runtime_loads(tmp_path):
    """--opset's upper bound is what ONNX Runtime runs, not only what onnx knows: onnx 1.23 knows opset 28, but ORT
    1.32 has no QuantizeLinear-28 kernel, so an opset-28 export failed with a traceback after the fp32 checks."""
    newest = onnx_utils.max_opset()
    assert export_onnx.parse_args(["--opset", str(newest)]).opset == newest
    fp32 = onnx_utils.export_onnx(_small_model(), tmp_path / "model.onnx", newest)
    prepared = onnx_utils.preprocess_for_quantization(fp32, tmp_path / "prepared.onnx")
    calibration = torch.randn(16, 1, 28, 28).numpy()
    for method in ("u8s8_reduce_range", "u8u8"):
        int8 = onnx_utils.quantize_int8(prepared, tmp_path / f"{method}.onnx", method, calibration)
        for path in (fp32, int8):
            logits = onnx_utils.ort_logits(onnx_utils.ort_session(path, 1), calibration[:3])
            assert logits.shape == (3, 10), path


def test_export_report_records_the_opset_in_the_file(tiny_dir, tmp_path):
    report = export_onnx.main([
        "--model", str(REPO_ROOT), "--output", str(tmp_path), "--calibration-dataset", str(tiny_dir), "--opset", "19",
        "--methods", "u8s8_reduce_range", "--calibration-samples", "64", "--eval-samples", "64",
        "--emulate-samples", "64", "--time-s", "0.02", "--min-agreement", "0", "--max-accuracy-drop", "1",
    ])  # fmt: skip
    assert report["opset"] == onnx_utils.written_opset(tmp_path / onnx_utils.FP32_FILE) == 19
    assert json.loads((tmp_path / onnx_utils.REPORT_FILE).read_text())["opset"] == 19


def test_export_refuses_a_file_as_output_and_empty_calibration(tmp_path, capsys):
    existing = tmp_path / "report.txt"
    existing.write_text("not a folder")
    for output in (existing, existing / "sub"):
        assert "is a file, not a folder" in _usage_error(export_onnx.parse_args, ["--output", str(output)], capsys)
    err = _usage_error(export_onnx.parse_args, ["--calibration-samples", "0"], capsys)
    assert "must be a positive int" in err


# ---- make_release -------------------------------------------------------------------------------------------------


def test_release_code_files_are_links_at_the_repo_root_and_copies_elsewhere(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "minivision_hf").mkdir(parents=True)
    for name in make_release.CODE_FILES:
        shutil.copyfile(REPO_ROOT / "minivision_hf" / name, repo / "minivision_hf" / name)
    monkeypatch.setattr(make_release, "ROOT", repo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_release.install_code_files(repo)
    make_release.install_code_files(elsewhere)
    for name in make_release.CODE_FILES:
        assert (repo / name).is_symlink() and (repo / name).resolve() == (repo / "minivision_hf" / name).resolve()
        assert not (elsewhere / name).is_symlink()
        assert (elsewhere / name).read_bytes() == (repo / "minivision_hf" / name).read_bytes()


def test_release_outside_the_repo_loads_as_remote_code(tmp_path):
    root = tmp_path / "release"
    root.mkdir()
    make_release.main(["--init", "--root", str(root)])
    assert all((root / name).is_file() and not (root / name).is_symlink() for name in make_release.CODE_FILES)
    loaded = run_fresh(f"""
        import json
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(root)!r}, trust_remote_code=True)
        print(json.dumps({{"module": type(model).__module__, "labels": model.config.num_labels}}))
    """, cwd=tmp_path)  # fmt: skip
    assert loaded["labels"] == 10 and not loaded["module"].startswith("minivision_hf")


def test_release_creates_a_missing_root(tmp_path):
    root = tmp_path / "not" / "yet" / "release"  # as --help says: created
    make_release.main(["--init", "--root", str(root)])
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", *make_release.CODE_FILES):
        assert (root / name).is_file(), name


def test_release_refuses_a_file_as_root(tmp_path, capsys):
    root = tmp_path / "release"
    root.write_text("a file")
    assert "is a file, not a folder" in _usage_error(make_release.parse_args, ["--init", "--root", str(root)], capsys)


# ---- make_model_card ----------------------------------------------------------------------------------------------

VARIANT = REPO_ROOT / "variants" / "best"


def _headline(result: dict) -> str:
    return f"**{result['accuracy']:.2%}** ({result['errors']} errors)"


def test_card_of_a_variant_folder_carries_that_variants_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    own = json.loads((VARIANT / "records" / "eval_test.json").read_text())
    root = json.loads((REPO_ROOT / "records" / "eval_test.json").read_text())
    assert own["accuracy"] != root["accuracy"]  # else the check below could not tell them apart
    for variant in ("variants/best", str(VARIANT), "best"):
        card = make_model_card.main(["--variant", variant, "--output", str(tmp_path / "card.md")]).read_text()
        assert "`best` variant" in card and _headline(own) in card and _headline(root) not in card, variant
    assert make_model_card.parse_args(["--variant", "best"]).output == str(VARIANT / "model_card.md")
    assert make_model_card.parse_args([]).output == "model_card.md"


@pytest.mark.parametrize("argv", [
    ["--variant", "variants/best", "--records", "records"],  # a variant folder with another folder's records
    ["--variant", "best", "--records", "records"],  # a variant name with the root's records
    ["--variant", "no-such-variant"],
    ["--records", "variants/best/records"],  # the root's card from a variant's records
])  # fmt: skip
def test_card_refuses_records_of_another_model(argv, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    _usage_error(make_model_card.parse_args, argv, capsys)


def test_card_names_the_number_of_images_evaluated(tmp_path):
    for source, argv in ((REPO_ROOT / "records", []), (VARIANT / "records", ["--variant", "best"])):
        records = tmp_path / source.parent.name / "records"
        records.mkdir(parents=True)
        for name in ("run_record.json", "variant.json"):
            if (source / name).exists():
                shutil.copyfile(source / name, records / name)
        result = json.loads((source / "eval_test.json").read_text())
        (records / "eval_test.json").write_text(json.dumps({**result, "num_samples": 256}))
        card = make_model_card.main([*argv, "--records", str(records), "--output", str(tmp_path / "card.md")])
        text = card.read_text()
        assert "Test accuracy (256 MNIST test images)" in text and "10,000 MNIST test images" not in text


def test_eval_dataset_problems_are_one_line(tmp_path):
    """A missing dataset, a split file asked for another split, a split the folder lacks: one line, no traceback."""
    tiny = REPO_ROOT / "tests" / "fixtures" / "mnist_tiny"
    for dataset, split, message in [(tmp_path / "nowhere", "test", "does not exist"),
                                    (tiny / "train-00000-of-00001.parquet", "test", "holds the 'train' split"),
                                    (tiny, "validation", "has no split 'validation'")]:  # fmt: skip
        with pytest.raises(SystemExit, match=f"eval_model.py: error: .*{message}"):
            eval_model.main(["--model", str(REPO_ROOT), "--dataset", str(dataset), "--split", split, "--no-progress"])


# ---- usage mistakes of every script: one line, exit 2, before any work -------------------------------------------


@pytest.mark.parametrize(
    ("script", "argv", "reason"),
    [
        ("eval_model", ["--model", "/nonexistent/model"], "no such folder"),
        ("eval_model", ["--model", "README.md"], "not a folder"),
        ("eval_model", ["--output", "README.md/eval.json"], "is a file, not a folder"),
        ("eval_model", ["--output", "scripts"], "is a folder, not a file"),
        ("export_onnx", ["--model", "/nonexistent/model"], "no such folder"),
        ("benchmark", ["--model", "/nonexistent/model"], "no such folder"),
        ("benchmark", ["--markdown", "README.md/bench.md"], "is a file, not a folder"),
        ("app_drawn_accuracy", ["--output", "README.md/x.json"], "is a file, not a folder"),
        ("validation_ensemble", ["/nonexistent/run"], "no run_record.json"),
        ("make_variant", ["--run", "/nonexistent/run"], "no run_record.json"),
        ("make_variant", ["--run", "r", "--out", ""], "is empty"),  # was the default variants/best, silently
        ("make_variant", ["--run", "r", "--out", "."], "is the working folder"),  # was a traceback after evaluating
        ("make_variant", ["--run", "r", "--name", ""], "is not a variant name"),  # would have replaced variants/
        ("make_variant", ["--run", "r", "--name", "../x"], "is not a variant name"),
        ("make_variant", ["--run", "r", "--comparison", "/nonexistent.json"], "no such file"),
        ("make_variant", ["--run", "r", "--seed-release", "/nonexistent/model"], "no such folder"),
        ("make_model_card", ["--output", "README.md/card.md"], "is a file, not a folder"),
        ("plot_curves", ["--record", "/nonexistent/run_record.json"], "no such file"),
        ("plot_curves", ["--out", "README.md"], "is a file, not a folder"),
        ("plot_recipe_search", ["--search", "/nonexistent/search.json"], "no such file"),
        ("plot_recipe_search", ["--out", "README.md/search.png"], "is a file, not a folder"),
        ("gpu_time_to_accuracy", ["--timeout", "-1"], "must be a positive float"),
        ("gpu_time_to_accuracy", ["--markdown", "README.md/g.md"], "is a file, not a folder"),
        ("gpu_time_to_accuracy", ["--output", "/tmp/g.md"], "give the table a file of its own"),  # table over JSON
        ("gpu_time_to_accuracy", ["--output", "/tmp/g.json", "--markdown", "/tmp/g.json"], "give the table a file"),
        ("benchmark", ["--int8-min-agreement", "2"], "must be in [0, 1]"),
        ("load_test", ["--clients", "0"], "must be positive"),
        ("load_test", ["--output", "README.md/load.json"], "is a file"),
        ("convert_seed_checkpoint", ["/nonexistent/seed.pth", "--output", "x"], "no such file"),
        ("convert_seed_checkpoint", ["README.md", "--output", "x", "--batch-size", "0"], "must be a positive int"),
    ],
)
def test_a_missing_input_or_an_unwritable_output_is_a_usage_error(script, argv, reason, capsys, monkeypatch):
    """Refused while parsing the arguments (exit 2, argparse's one line), not as a traceback when the script reads
    the missing path or, after the whole run, writes its result."""
    import importlib

    monkeypatch.chdir(REPO_ROOT)
    module = importlib.import_module(f"scripts.{script}")
    assert reason in _usage_error(module.parse_args, argv, capsys)


def test_write_json_and_write_text_leave_the_old_file_when_killed_while_writing(tmp_path, monkeypatch):
    """A run killed (or out of disk) while writing its record leaves the previous file whole, not a truncated one."""
    from pathlib import Path

    from minivision_hf.training import write_json, write_text

    record, readme = tmp_path / "record.json", tmp_path / "README.md"
    record.write_text('{"old": true}\n')
    readme.write_text("old readme\n")
    real_write_text = Path.write_text

    def killed_half_way(path, text, *args, **kwargs):
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_json(record, {"new": "x" * 100})
    with pytest.raises(KeyboardInterrupt):
        write_text(readme, "new readme " * 20)
    monkeypatch.undo()
    assert record.read_text() == '{"old": true}\n' and readme.read_text() == "old readme\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "record.json"]  # no temporary file left
    write_json(record, {"new": 1})
    assert json.loads(record.read_text()) == {"new": 1}


# ---- interrupted scripts ------------------------------------------------------------------------------------------

INTERRUPTED = r"""
import time
import scripts  # what `python -m scripts.NAME` imports first; it installs this itself when a script is the program
scripts.install_interrupt_handling()
try:
    print("ready", flush=True)  # inside the try: a signal sent as soon as "ready" is read may land before the sleep
    time.sleep(60)
finally:
    print("cleaned up", flush=True)  # a staging folder removed, a child process killed
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_script_cleans_up_and_ends_with_one_line(sig, tmp_path):
    """Ctrl-C ends a script with one line, not a traceback; SIGTERM (kill, timeout) too, after the script's `finally`
    blocks ran (by default it ends the process on the spot: temporary folders and child processes left behind)."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -getattr(signal, sig) and out == "cleaned up\n"  # ended by the signal, as without
    assert "Traceback" not in err and f"interrupted by {sig}" in err and "run it the same again" in err, err


# Sends the process SIGINT when it starts importing the package (torch, transformers: seconds), before any script code.
INTERRUPT_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
class InterruptOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "minivision_hf":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, InterruptOnImport())
"""


@pytest.mark.parametrize("form", [["-m", "scripts.eval_model"], ["scripts/eval_model.py"]])
def test_ctrl_c_while_the_libraries_import_ends_with_the_scripts_one_line(form, tmp_path):
    """A Ctrl-C in a script's first seconds, while torch and transformers import, printed KeyboardInterrupt's
    traceback (the handling was installed after that import); it names the script, also under -m (argv[0] is "-m"
    then)."""
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_WHILE_IMPORTING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, *form, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == -2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip() == "eval_model: interrupted by SIGINT (Ctrl-C); no output was left half-written " \
                                    "(each is replaced whole): run it the same again"  # fmt: skip


def test_importing_from_scripts_in_another_program_changes_no_signal_handling():
    """A program that imports from scripts (tests, a notebook, a REPL) keeps its own SIGTERM and excepthook: only a
    script that is the program installs them (a REPL that had imported scripts could no longer be stopped by kill)."""
    code = ("import signal, sys\nhook = sys.excepthook\nimport scripts\n"
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, sys.excepthook is hook)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "False"], result.stderr[-2000:]  # the missing-extra hook only


def test_write_text_removes_the_temporary_files_of_writers_that_were_killed(tmp_path):
    """A writer SIGKILLed while writing leaves its temporary file (named by its process id); the next write of that
    file removes those of processes that no longer run (one was left for good per kill), not a live writer's."""
    from minivision_hf.training import write_text

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed, live = tmp_path / f".record.json.{int(ended.stdout)}.tmp", tmp_path / f".record.json.{os.getppid()}.tmp"
    other = tmp_path / f".other.json.{int(ended.stdout)}.tmp"  # another file's: left to that file's next write
    for leftover in (killed, live, other):
        leftover.write_text('{"half')
    write_text(tmp_path / "record.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["record.json", live.name, other.name])


def test_a_script_run_as_a_file_is_interrupted_like_under_dash_m(tmp_path):
    """`python scripts/train.py` ends a Ctrl-C with the same one line as `python -m scripts.train` (it printed a
    traceback: the file form never imported the `scripts` package, whose hooks do it); every script imports that
    package before any library, so a missing extra is also named the same way in both forms."""
    import ast
    import signal

    proc = subprocess.Popen([sys.executable, "scripts/train.py", "--dataset", str(FIXTURES / "mnist_tiny"),
                             "--output-dir", str(tmp_path / "run"), "--epochs", "500", "--no-progress"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})  # fmt: skip
    while not proc.stdout.readline().startswith("{"):  # Trainer's first log line: training has started (notes on
        assert proc.poll() is None, "train.py ended before training"  # the fast path, e.g. no compiler, come first)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert "train: interrupted by SIGINT (Ctrl-C)" in err and "--resume" in err
    for script in sorted((REPO_ROOT / "scripts").glob("*.py")):
        if script.name == "__init__.py":
            continue
        body = ast.parse(script.read_text()).body
        modules = [node.module if isinstance(node, ast.ImportFrom) else alias.name for node in body
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names]  # fmt: skip
        outside = [m for m in modules if m and m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"]
        assert outside and outside[0] == "scripts", f"{script.name}: first non-stdlib import is {outside[:1]}"


PARENT_OF_A_SCRIPT = """
import os, subprocess, sys, time
code = "import scripts, time; print('ready', flush=True); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "MINIVISION_PARENT_PID": str(os.getpid())},
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline() == "ready\\n"
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_script_started_by_a_killed_parent_stops_too():
    """benchmark's training runs are scripts started with MINIVISION_PARENT_PID: when benchmark is SIGKILLed (no
    clean-up can run there), they stop too instead of training on for minutes."""
    import time

    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_SCRIPT], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and not _zombie(child):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or _zombie(child), "the child outlived its killed parent"


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_revision_of_a_local_folder_is_a_usage_error(capsys):
    """from_pretrained reads a local folder whatever --revision says: eval_model recorded `revision` for it anyway (a
    false provenance); it is now refused, as in export_onnx."""
    err = _usage_error(eval_model.parse_args, ["--model", str(REPO_ROOT), "--revision", "best"], capsys)
    assert "is a local folder (a revision applies to a Hub id)" in err


# ---- empty values, output folders swapped in whole, seeds, comparisons, load test ---------------------------------


@pytest.mark.parametrize("where", ["", ".", "..", "here", "repo", "above-repo"])
def test_an_output_folder_that_is_the_working_folder_or_the_repo_is_a_usage_error(where, tmp_path, monkeypatch,
                                                                                  capsys):  # fmt: skip
    """train.py's --output-dir and export_onnx.py's --output are swapped in whole (replace_folder): '' and '.' ended
    in a traceback ("PosixPath('.') has an empty name"); the absolute working folder, or one above it, was swapped
    away under the shell; the repo root had its release files replaced by the run's."""
    from scripts import train

    here = tmp_path / "work" / "sub"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    folder = {"here": str(here), "repo": str(REPO_ROOT), "above-repo": str(REPO_ROOT.parent)}.get(where, where)
    argv = ["--dataset", str(FIXTURES / "mnist_tiny"), "--smoke", "--output-dir", folder]
    assert "--output-dir" in _usage_error(train.parse_args, argv, capsys)
    assert "argument --output" in _usage_error(export_onnx.parse_args, ["--model", str(REPO_ROOT), "--output", folder],
                                               capsys)  # fmt: skip
    assert [p.name for p in here.iterdir()] == ["notes.txt"]
    assert train.parse_args([*argv[:-1], "run"]).output_dir == "run"  # a folder of its own, under the working one


@pytest.mark.parametrize(("script", "argv"), [
    ("train", ["--dataset", "", "--smoke", "--output-dir", "{tmp}/run"]),
    ("eval_model", ["--model", str(REPO_ROOT), "--dataset", " "]),
    ("export_onnx", ["--model", str(REPO_ROOT), "--calibration-dataset", ""]),
    ("eval_model", ["--model", ""]),  # Path("") is the working folder: the repo root passed as holding config.json
    ("export_onnx", ["--model", ""]),
])  # fmt: skip
def test_an_empty_dataset_or_model_is_a_usage_error(script, argv, tmp_path, capsys, monkeypatch):
    """An empty --dataset read the working folder as a dataset ("Couldn't infer the same data file format"); an
    empty --model passed the check from the repo root, then gave huggingface_hub's traceback (Repo id must ...)."""
    import importlib

    monkeypatch.chdir(REPO_ROOT)
    module = importlib.import_module(f"scripts.{script}")
    err = _usage_error(module.parse_args, [a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert "empty: give" in err


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--seed", str(2**32)], ["--max-train-samples", "0"],
                                  ["--max-eval-samples", "0"]])  # fmt: skip
def test_train_refuses_seeds_numpy_cannot_take_and_zero_smoke_samples(argv, tmp_path, capsys):
    """--seed -1 trained nothing and ended in numpy's traceback (Seed must be between 0 and 2**32 - 1); --smoke
    replaced --max-train-samples 0 by 512 without a word (refused without --smoke)."""
    from scripts import train

    err = _usage_error(train.parse_args, ["--dataset", str(FIXTURES / "mnist_tiny"), "--smoke", "--output-dir",
                                          str(tmp_path / "run"), *argv], capsys)  # fmt: skip
    assert f"{argv[0]} {argv[1]}" in err
    assert not (tmp_path / "run").exists()


def test_compare_recipes_refuses_mistakes_before_it_trains(tmp_path, capsys, monkeypatch):
    """A missing --merge or --evaluate-test record, an unwritable --output and --only without --evaluate-test were
    tracebacks (the --output one after the first run had trained) or ignored; a variant's mistyped train.py flag was
    found only when its turn came, after the runs before it had trained."""
    from scripts import compare_recipes

    parse = compare_recipes.parse_args
    assert "no such file" in _usage_error(parse, ["--merge", str(tmp_path / "none.json")], capsys)
    assert "no such file" in _usage_error(parse, ["--evaluate-test", str(tmp_path / "none.json")], capsys)
    assert "is a file, not a folder" in _usage_error(parse, ["--output", f"{REPO_ROOT}/README.md/r.json"], capsys)
    assert "applies to --evaluate-test only" in _usage_error(parse, ["--only", "plus-ema"], capsys)

    def trained(argv):
        raise AssertionError(f"trained {argv}")

    monkeypatch.setattr(compare_recipes.train, "main", trained)
    argv = ["--smoke", "--seeds", "1", "--dataset", str(FIXTURES / "mnist_tiny"), "--work-dir", str(tmp_path / "w"),
            "--output", str(tmp_path / "r.json"), "--variant", "a", "seed", "--epochs 1", "--variant", "b", "seed",
            "--bogus 3"]  # fmt: skip
    assert "unrecognized arguments: --bogus 3" in _usage_error(compare_recipes.main, argv, capsys)
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.json").exists()


def test_compare_recipes_lets_a_run_distill_from_one_it_trains_first(tmp_path, capsys, monkeypatch):
    """The up-front flag check refused a student whose --distill-from names a teacher that an earlier run of the same
    comparison trains (it does not exist before that run); a teacher that nothing trains is still refused."""
    from scripts import compare_recipes

    started = []

    def trained(argv):
        started.append(argv[argv.index("--output-dir") + 1])
        raise KeyboardInterrupt  # stop at the first run: the check before it has passed

    monkeypatch.setattr(compare_recipes.train, "main", trained)
    work = tmp_path / "w"
    argv = ["--smoke", "--seeds", "1", "--dataset", str(FIXTURES / "mnist_tiny"), "--work-dir", str(work),
            "--output", str(tmp_path / "r.json"), "--variant", "teacher", "seed", "", "--variant", "student", "seed"]
    with pytest.raises(KeyboardInterrupt):
        compare_recipes.main([*argv, f"--distill-from {work / 'teacher-seed1'} --distill-weight 0.5"])
    assert started == [str(work / "teacher-seed1")]
    message = _usage_error(compare_recipes.main, [*argv, f"--distill-from {work / 'other'} --distill-weight 0.5"],
                           capsys)  # fmt: skip
    assert "no such folder" in message and started == [str(work / "teacher-seed1")]


@pytest.mark.parametrize(("argv", "repeated"), [(["--seeds", "1", "1"], "--seeds: 1"),
                                               (["--recipes", "seed", "plus", "seed"], "--recipes: seed"),
                                               (["--variant", "a", "seed", "", "--variant", "a", "plus", ""],
                                                "--variant: a")])  # fmt: skip
def test_compare_recipes_refuses_a_run_given_twice(argv, repeated, capsys):
    """--seeds 1 1 reported one run as two seeds ("over 2 seeds", std 0); two variants of one name trained into one
    folder (the second refused only after the first had trained)."""
    from scripts import compare_recipes

    assert f"{repeated} given more than once" in _usage_error(compare_recipes.parse_args, argv, capsys)


def test_compare_recipes_evaluate_test_of_no_run_leaves_the_output(tmp_path):
    """--only with a variant the records do not hold replaced --output, with its evaluated runs, by a record of no
    runs (exit 0)."""
    from scripts import compare_recipes

    search, output = tmp_path / "search.json", tmp_path / "best.json"
    run = {"variant": "plus-ema", "recipe": "plus", "output_dir": "w/a"}
    search.write_text(json.dumps({"description": "d", "dataset": "x", "recipes": {}, "command": "c", "runs": [run]}))
    output.write_text('{"runs": ["evaluated"]}')
    with pytest.raises(SystemExit, match="--only plus-eam: no run of .* \\(they hold plus-ema\\); .* left as it was"):
        compare_recipes.main(["--evaluate-test", str(search), "--only", "plus-eam", "--output", str(output)])
    assert output.read_text() == '{"runs": ["evaluated"]}'


def test_load_test_counts_a_client_that_cannot_connect_as_errors():
    """A client whose app was not there died with a thread traceback, so the record said 0 requests, 0 errors (exit
    0, records/load_test.json replaced); and the clients that had connected waited for it at the barrier for ever."""
    import threading

    from scripts import load_test

    barrier, results, waited = threading.Barrier(2), [], []
    other = threading.Thread(target=lambda: waited.append(_broken(barrier)))
    other.start()
    load_test.run_client("http://127.0.0.1:9/", 0, 3, [], 0, results, barrier)  # port 9: nothing listens
    other.join(timeout=30)
    assert waited == [True] and len(results) == 3
    assert all(r["error"].startswith("could not connect") for r in results)


def test_load_test_summary_of_failed_requests_is_strict_json():
    """Every request failed: the latencies were NaN (not JSON that strict readers accept) and the throughput counted
    the failures as served requests."""
    from scripts import load_test

    failed = [{"error": "could not connect", "latency_s": 0.001, "predicted": None, "label": "7", "image": "7.png"}] * 4
    summary = load_test.summarize(failed, wall_s=2.0)
    json.dumps(summary, allow_nan=False)
    assert summary["latency_ms"] is None and summary["throughput_rps"] == 0 and summary["errors"] == 4
    answered = [{"error": None, "latency_s": 0.5, "predicted": "7", "label": "7", "image": "7.png"}] * 2
    summary = load_test.summarize(failed + answered, wall_s=2.0)
    assert summary["latency_ms"]["p50"] == 500.0 and summary["throughput_rps"] == 1.0 and summary["requests"] == 6


def _broken(barrier) -> bool:
    import threading

    try:
        barrier.wait(timeout=30)
    except threading.BrokenBarrierError:
        return True
    return False


def test_resuming_a_run_stopped_at_its_target_follows_the_target_given_now(tmp_path, capsys):
    """A run stopped at --target-accuracy, resumed with the same target, trained a second empty segment (a second
    train_runtime at the same step in TensorBoard); resumed with a higher target (or none), it stopped at once and
    recorded the old target as reached, as if the new value had not been given."""
    from scripts import train

    argv = ["--dataset", str(FIXTURES / "mnist_tiny"), "--output-dir", str(tmp_path / "run"), "--epochs", "3",
            "--max-train-samples", "128", "--max-eval-samples", "64", "--batch-size", "64", "--no-progress"]
    first = train.main([*argv, "--target-accuracy", "0.01"])
    assert first["global_step"] == 2 and first["target_accuracy"]["reached"]
    assert train.main([*argv, "--target-accuracy", "0.01", "--resume"]) == first
    assert "nothing is left to train" in capsys.readouterr().out
    further = train.main([*argv, "--target-accuracy", "0.99", "--resume"])
    assert further["global_step"] == 6 and further["target_accuracy"] == {"target": 0.99, "reached": False}
    assert [e["epoch"] for e in further["epochs"]] == [1, 2, 3]


def test_train_refuses_a_folder_holding_a_saved_model_it_would_replace(tmp_path, capsys):
    """--output-dir variants/best (a folder with a model and no checkpoints) trained and replaced its weights, while
    its model card and records, kept beside them, went on describing the old model."""
    from scripts import train

    variant = tmp_path / "best"
    shutil.copytree(REPO_ROOT / "variants" / "best", variant)
    before = (variant / "model.safetensors").read_bytes()
    for resume in ([], ["--resume"]):  # no checkpoint to resume: --resume would start from scratch and replace it
        err = _usage_error(train.parse_args, ["--dataset", str(FIXTURES / "mnist_tiny"), "--smoke", "--output-dir",
                                              str(variant), *resume], capsys)  # fmt: skip
        assert "holds a saved model (config.json" in err
    assert (variant / "model.safetensors").read_bytes() == before
