"""Plot the training curves and the confusion matrix from a run record and an evaluation JSON.

    python -m scripts.plot_curves --record records/run_record.json --eval records/eval_test.json --out assets/

Writes train_loss.png, test_loss.png, test_accuracy.png, learning_rate.png and confusion_matrix.png.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minivision_hf.training import existing_file, output_folder, write_file  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", type=existing_file, default="records/run_record.json",
                   help="run_record.json written by scripts/train.py")  # fmt: skip
    p.add_argument("--eval", type=existing_file, default=None,
                   help="JSON written by scripts/eval_model.py (default: records/eval_test.json, where it exists)")
    p.add_argument("--out", type=output_folder, default="assets", help="folder for the PNGs")
    args = p.parse_args(argv)
    if args.eval is None and Path(DEFAULT_EVAL).is_file():
        args.eval = DEFAULT_EVAL
    try:  # a file of another kind is one line, not a KeyError's traceback after some plots are written
        args.record_data = read_json(args.record, "a run record of scripts/train.py", RECORD_KEYS)
        args.eval_data = args.eval and read_json(args.eval, "an evaluation of scripts/eval_model.py", EVAL_KEYS)
    except ValueError as error:
        p.error(str(error))
    return args


DEFAULT_EVAL = "records/eval_test.json"
RECORD_KEYS = ("epochs",)
EVAL_KEYS = ("confusion_matrix", "labels", "num_samples", "accuracy")


def read_json(path: str | Path, what: str, keys: tuple[str, ...]) -> dict:
    """The JSON object in `path`, which must hold `keys` (a run record's also one epoch or more, each numbered);
    ValueError saying what it is not otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path} is not {what}: {error}") from None
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(f"{path} is not {what}: no {', '.join(missing)}")
    epochs = data.get("epochs", [{"epoch": 0}])
    if epochs == []:
        raise ValueError(f"{path} holds no epochs: nothing to plot")
    if not isinstance(epochs, list) or not all(isinstance(row, dict) and "epoch" in row for row in epochs):
        raise ValueError(f"{path} is not {what}: its epochs are not a list of numbered epochs")
    return data


def _curve(epochs: list[dict], key: str, title: str, ylabel: str, path: Path, best_epoch=None, log=False, pct=False):
    xs = [r["epoch"] for r in epochs if key in r]
    ys = [r[key] * (100 if pct else 1) for r in epochs if key in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5)
    if best_epoch is not None and best_epoch in xs:
        y = ys[xs.index(best_epoch)]
        ax.scatter([best_epoch], [y], color="crimson", zorder=3, label=f"kept: epoch {best_epoch} ({y:.4g})")
        ax.legend()
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format="png"))  # atomic: never half a PNG
    plt.close(fig)


def plot_confusion(result: dict, path: Path) -> None:
    matrix = np.asarray(result["confusion_matrix"])
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    ax.imshow(off_diagonal, cmap="Reds")
    for i in range(len(labels)):
        for j in range(len(labels)):
            value = matrix[i, j]
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="black" if i != j else "navy", fontweight="bold" if i == j else "normal")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(f"Confusion matrix, {result['num_samples']:,} test images: accuracy {result['accuracy']:.2%}\n"
                 "(errors shaded; diagonal in blue)")  # fmt: skip
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format="png"))  # atomic: never half a PNG
    plt.close(fig)


def plot_all(record: dict, result: dict | None, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    epochs, best = record["epochs"], record.get("best_epoch") if record.get("kept") == "best" else None
    name = f"Mini-Vision-V2, {record['recipe']} recipe" if record.get("recipe") else "Mini-Vision-V2"
    paths = [out / "train_loss.png", out / "test_loss.png", out / "test_accuracy.png", out / "learning_rate.png"]
    _curve(epochs, "train_loss", f"{name}: training loss (augmented)", "cross-entropy", paths[0], log=True)
    # A run with a held-out validation split evaluated on it every epoch (keys stay test_*; the title says which).
    held_out = "validation" if record.get("recipe_values", {}).get("val_size") else "test"
    _curve(epochs, "test_loss", f"{name}: {held_out} loss", "cross-entropy", paths[1], best, log=True)
    _curve(epochs, "test_accuracy", f"{name}: {held_out} accuracy", "accuracy (%)", paths[2], best, pct=True)
    _curve(epochs, "lr", f"{name}: learning rate per epoch", "learning rate", paths[3], log=True)
    if result is not None:
        paths.append(out / "confusion_matrix.png")
        plot_confusion(result, paths[-1])
    return paths


def main(argv=None) -> list[Path]:
    args = parse_args(argv)  # it read and checked the record and the evaluation
    paths = plot_all(args.record_data, args.eval_data, Path(args.out))
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
