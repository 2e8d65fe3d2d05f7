"""Every script runs both ways README shows, `python -m scripts.X` and `python scripts/X.py` from the repo root, and
none shadows a library's module name (scripts/evaluate.py once hid the
`evaluate` library when scripts/ was on sys.path). `--help` is enough to catch both import traps."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "scripts").glob("*.py") if p.stem != "__init__")

def _help(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command + ["--help"], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def help_runs() -> dict:
    """`--help` of every script, both ways, a few at a time (each is mostly imports)."""
    jobs = {}
    for name in SCRIPTS:
        jobs[(name, "-m")] = ([sys.executable, "-m", f"scripts.{name}"], REPO_ROOT)
        jobs[(name, "file")] = ([sys.executable, f"scripts/{name}.py"], REPO_ROOT)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(_help, *job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def test_there_are_scripts_to_check():
    assert {"train", "eval_model", "export_onnx", "benchmark"} <= set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help_runs_as_module_and_as_file(help_runs, name):
    for how in ("-m", "file"):
        run = help_runs[(name, how)]
        assert run.returncode == 0, f"{name} ({how}): {run.stderr[-2000:]}"
        assert "usage:" in run.stdout, f"{name} ({how}) printed no usage"


def test_no_script_takes_the_name_of_an_installed_or_standard_module():
    """With scripts/ on sys.path (`python scripts/X.py`), a script named like a module would be imported in its place
    by anything that imports that module. Checked in a fresh interpreter (this one's sys.path has grown: importing
    onnxruntime.transformers appends its own folder, which holds a `benchmark` module of its own)."""
    code = ("import importlib.util, json, sys; names = json.loads(sys.argv[1]); print(json.dumps({n: (n in "
            "sys.stdlib_module_names or importlib.util.find_spec(n) is not None) for n in names}))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, json.dumps(SCRIPTS)], cwd="/", capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    taken = [name for name, exists in json.loads(run.stdout).items() if exists]
    assert not taken, f"scripts named like importable modules: {taken}"


def test_a_usage_error_found_after_parsing_exits_2_with_one_line(tmp_path):
    """Errors found once the arguments are parsed (here a dataset folder that does not exist) end as argparse's own:
    one "train.py: error: ..." line on stderr, no traceback, exit status 2; nothing is written."""
    run = subprocess.run([sys.executable, "-m", "scripts.train", "--dataset", str(tmp_path / "nowhere"), "--smoke",
                          "--output-dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: ") and "does not exist" in errors[0]
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
