"""Command-line scripts, each run as `python -m scripts.NAME` (its docstring has the exact command).

When a script is the program (`python -m scripts.NAME` or `python scripts/NAME.py`; not a test, notebook or program
that imports from them), importing the package makes it end the same way when it is stopped: Ctrl-C (SIGINT) or
SIGTERM raises KeyboardInterrupt where the script is, so its `finally` blocks and context managers run (staging and
temporary folders removed, child processes killed), and it ends with one line on stderr instead of a traceback
(SIGTERM would otherwise end the process on the spot, leaving them behind); the exit status is a signal's, as without
the handling (130 after Ctrl-C, 143 after SIGTERM in a shell)."""

import ctypes
import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM (kill, timeout, a job scheduler, torchrun stopping its workers) where the script is."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"{signal.Signals(signum).name}")


def _say_interrupted(previous):
    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        how = "SIGTERM" if issubclass(exc_type, Terminated) else "SIGINT (Ctrl-C)"
        name = script_name()
        again = "again with --resume to continue from its last checkpoint" if name == "train" else "the same again"
        print(f"\n{name}: interrupted by {how}; no output was left half-written (each is replaced whole): run it "
              f"{again}", file=sys.stderr)  # fmt: skip
        if issubclass(exc_type, Terminated):  # end as SIGTERM ends a process (status 143), not as a failure (1)
            sys.stdout.flush()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def script_name() -> str:
    """The running script's name ("train"), also while `python -m scripts.train` is still importing (argv[0] is "-m"
    until then)."""
    if sys.argv[:1] == ["-m"] and "-m" in sys.orig_argv[:-1]:
        return sys.orig_argv[sys.orig_argv.index("-m") + 1].rpartition(".")[2]
    return Path(sys.argv[0]).stem or "script"


class UsageError(SystemExit):
    """A usage error found after argument parsing (a dataset or model that cannot be loaded, a --resume that does not
    fit): exit status 2, as argparse's own errors, with the message as the exception's text."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def usage_error(prog: str, message: str) -> NoReturn:
    """Print "<prog>: error: <message>" on stderr (argparse's form; prog "train.py") and exit with status 2
    (`UsageError`)."""
    text = f"{prog}: error: {message}"
    print(text, file=sys.stderr)
    raise UsageError(text)


def running_a_script() -> bool:
    """Whether one of these scripts is the program: `python -m scripts.NAME` (argv[0] is "-m" while runpy imports
    this package) or `python scripts/NAME.py`; not pytest, a notebook, a REPL or a program importing from them."""
    return sys.argv[:1] == ["-m"] or Path(sys.argv[0] or ".").resolve().parent == Path(__file__).resolve().parent


def install_interrupt_handling() -> None:
    """SIGTERM raises `Terminated` (a KeyboardInterrupt), unless something else already handles it; an uncaught
    KeyboardInterrupt prints one line, not a traceback."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    if not getattr(sys.excepthook, "_minivision_interrupts", False):
        sys.excepthook = _say_interrupted(sys.excepthook)
        sys.excepthook._minivision_interrupts = True


# A script started by another process that names itself here (benchmarking.train_run: benchmark's training runs)
# stops when that process dies, SIGKILL included (Linux), instead of training on for minutes with nobody to read it.
PARENT_PID_VARIABLE = "MINIVISION_PARENT_PID"


def stop_with_parent() -> None:
    """In a child whose environment names its parent (PARENT_PID_VARIABLE): SIGTERM when the parent dies (prctl
    PR_SET_PDEATHSIG, Linux; SIGTERM runs the child's clean-up), and exit at once if it has died already."""
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)  # not passed on to this process's own children
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the call above
        sys.exit(f"the process that started this one ({parent}) has ended; stopping")


if running_a_script():  # before torch and transformers import (seconds): a Ctrl-C then ends as it does later
    install_interrupt_handling()
stop_with_parent()

from minivision_hf.extras import install_excepthook  # noqa: E402  (imports the package: torch, transformers)

install_excepthook()  # a script stopped by a missing optional dependency ends with the extra to install
