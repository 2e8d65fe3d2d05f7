"""Drawn-digit accuracy of the Space for each model it can serve: the app test's drawn set (tests/test_app.py:
N_DRAWN MNIST test digits re-drawn the ways people draw or upload one, rng seed 0) through the app's own predict().

    python -m scripts.app_drawn_accuracy --dataset ../shared/data/mnist --output records/app_drawn_accuracy.json

The app is imported as spaces_app/app.py resolves its models (MINIVISION_* variables, model_source.json, or the
release at the repo root and variants/best); every model it offers is measured on the same drawings.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import numpy as np

from minivision_hf.data import load_mnist
from minivision_hf.training import git_commit, output_file, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ylecun/mnist", help="Hub id or local copy of MNIST")
    p.add_argument("--output", type=output_file, default="records/app_drawn_accuracy.json")
    return p.parse_args(argv)


REPO_ROOT = Path(__file__).resolve().parents[1]


def portable(source: str) -> str:
    """A model source as the record stores it: a folder inside this repository relative to its root ("." for the
    release, "variants/best"), so the record reads the same on every checkout; Hub ids and other paths as they are."""
    path = Path(source)
    if path.is_absolute() and path.resolve().is_relative_to(REPO_ROOT):
        return str(path.resolve().relative_to(REPO_ROOT)) or "."
    return source


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tests.conftest import load_app
    from tests.test_app import N_DRAWN, draw_like_a_person, sketch, top_label

    try:
        test = load_mnist(args.dataset, "test")
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # missing, offline, not MNIST
        scripts.usage_error("app_drawn_accuracy.py", str(err))
    app = load_app()
    rng = np.random.default_rng(0)  # the app test's drawings, in its order: one rng for the indices and the drawing
    indices = rng.choice(len(test), size=N_DRAWN, replace=False)
    drawings = []
    for index in indices:
        row = test[int(index)]
        drawings.append((int(index), str(row["label"]), draw_like_a_person(row["image"], rng)))
    results = {}
    for name in app.MODELS:
        start = time.perf_counter()
        misses = [(i, label, p) for i, label, image in drawings
                  if (p := top_label(app.predict(sketch(image), name))) != label]  # fmt: skip
        results[name] = {
            "source": portable(app.MODEL_SOURCES[name][0]),
            "revision": app.MODEL_SOURCES[name][1],
            "accuracy": 1 - len(misses) / len(drawings),
            "misses": misses,
            "wall_s": round(time.perf_counter() - start, 1),
        }
        print(f"{name}: drawn-digit accuracy {results[name]['accuracy']:.2%} on {len(drawings)} drawings")
    record = {
        "description": f"The app test's drawn set ({N_DRAWN} MNIST test digits drawn like a person, rng seed 0) "
        "through spaces_app/app.py's predict(), per model the app serves.",
        "default_model": app.DEFAULT_MODEL,
        "models": results,
        "dataset": str(args.dataset),
        "command": "python -m scripts.app_drawn_accuracy " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git": git_commit(),
    }
    write_json(Path(args.output), record)
    return record


if __name__ == "__main__":
    main()
