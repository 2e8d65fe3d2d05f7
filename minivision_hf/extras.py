"""The optional extras of the `minivision-hf` install, and the pip command for a module one of them provides.

The core install runs the model (`from_pretrained`, the image processor, the pipeline); the rest is opt-in:

    pip install minivision-hf                 # torch, torchvision, transformers, safetensors, numpy, pillow
    pip install 'minivision-hf[train]'        # + training, evaluation and plots (scripts.train, eval_model, ...)
    pip install 'minivision-hf[onnx]'         # + ONNX export and ONNX Runtime (scripts.export_onnx, benchmark)
    pip install 'minivision-hf[demo]'         # + the Gradio demo (spaces_app/app.py)
    pip install -e '.[dev]'                   # everything + the test tools (what scripts/setup.sh installs)

`scripts/__init__.py` installs `install_excepthook()`, so a `python -m scripts.NAME` run that stops on a missing
module ends with the command that installs it; `explain_missing_extra()` does the same for a block of imports.
"""

import contextlib
import re
import sys
from collections.abc import Iterator

# Top-level module -> the extra of pyproject.toml that installs it (tests/test_core_install.py checks the two agree).
EXTRA_OF_MODULE: dict[str, str] = {
    "datasets": "train",
    "evaluate": "train",
    "accelerate": "train",
    "tensorboard": "train",
    "matplotlib": "train",
    "tqdm": "train",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "gradio": "demo",
    "gradio_client": "dev",
    "pytest": "dev",
    "ruff": "dev",
    "playwright": "dev",
}


def missing_extra(error: BaseException) -> str | None:
    """The extra that provides the module an ImportError is about, or None when no extra does.

    A ModuleNotFoundError names its module; other ImportErrors are matched on the module names in their message
    (transformers raises "Using the `Trainer` with `PyTorch` requires `accelerate>=1.1.0`" when accelerate is absent).
    """
    if not isinstance(error, ImportError):
        return None
    if isinstance(error, ModuleNotFoundError) and error.name:
        return EXTRA_OF_MODULE.get(error.name.split(".")[0])
    message = str(error)
    if "requires" not in message and "install" not in message:
        return None  # e.g. "cannot import name ..." from an installed module: a version problem, not a missing extra
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message):
        if word in EXTRA_OF_MODULE:
            return EXTRA_OF_MODULE[word]
    return None


def install_hint(error: BaseException) -> str | None:
    """The line telling which extra to install for an ImportError an extra fixes, e.g. "this needs the 'train' extra:
    pip install 'minivision-hf[train]' ..."; None when no extra provides the missing module."""
    extra = missing_extra(error)
    if extra is None:
        return None
    command = "pip install -e '.[dev]'" if extra == "dev" else f"pip install 'minivision-hf[{extra}]'"
    return f"this needs the '{extra}' extra: {command} (in this repository: bash scripts/setup.sh)"


def add_install_hint(error: BaseException) -> None:
    """Append `install_hint` to the error's message in place (once), so the traceback's last line says what to do."""
    hint = install_hint(error)
    if hint is None or hint in str(error):
        return
    message = f"{error.args[0] if error.args else error}; {hint}"
    error.args = (message, *error.args[1:])
    if isinstance(error, ImportError):
        error.msg = message  # ImportError prints `msg` when it is set


@contextlib.contextmanager
def explain_missing_extra() -> Iterator[None]:
    """Around imports of optional modules: an ImportError for one of them names the extra to install."""
    try:
        yield
    except ImportError as error:
        add_install_hint(error)
        raise


def install_excepthook() -> None:
    """Make an uncaught ImportError of an extra's module end with the pip command (for the scripts' entry points)."""
    previous = sys.excepthook
    if getattr(previous, "_minivision_extras", False):
        return

    def hook(exc_type, exc, tb):
        if exc is not None:
            add_install_hint(exc)
        previous(exc_type, exc, tb)

    hook._minivision_extras = True
    sys.excepthook = hook


__all__ = [
    "EXTRA_OF_MODULE",
    "add_install_hint",
    "explain_missing_extra",
    "install_excepthook",
    "install_hint",
    "missing_extra",
]
