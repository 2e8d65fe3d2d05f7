"""Shared test fixtures: paths, the real MNIST copy (skipped when absent), and a fresh-process runner."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MNIST_DIR = Path(os.environ.get("MINIVISION_MNIST_DIR", REPO_ROOT.parent / "shared" / "data" / "mnist"))


APP_FILE = REPO_ROOT / "spaces_app" / "app.py"


def load_app():
    """Import spaces_app/app.py once per session (it loads the model at import, ~1 s after gradio's ~5 s)."""
    import importlib.util

    name = "minivision_space_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, APP_FILE)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except OSError as err:  # transformers: no config.json / weights at the resolved source
        pytest.skip(f"no loadable model for the app ({err}); commit the release or set MINIVISION_MODEL")
    sys.modules[name] = module
    return module


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "test-00000-of-00001.parquet").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR} (set MINIVISION_MNIST_DIR to a copy in ylecun/mnist layout)")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return FIXTURES / "mnist_tiny"


@pytest.fixture(scope="session")
def tiny_test():
    from minivision_hf.data import load_mnist

    return load_mnist(str(FIXTURES / "mnist_tiny"), "test")


def run_fresh(code: str, cwd: Path, env: dict | None = None, block_package: bool = True, timeout: int = 240) -> dict:
    """Run `code` in a fresh Python process in `cwd` with a clean PYTHONPATH; with `block_package`, `minivision_hf`
    cannot be imported there (as on a machine that only has transformers). The code must print one JSON line last."""
    prelude = (
        "import sys\nsys.modules['minivision_hf'] = None  # not importable: remote code only\n" if block_package else ""
    )
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, f"fresh process failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
