"""Plot the recipe search (issue 13): every variant tried, on the validation rows and, once chosen, on the test split.

    python -m scripts.plot_recipe_search  # records/recipe_search*.json + recipes_best*.json -> assets/recipe_search.png

Writes assets/recipe_search.png: (left) the kept weights' validation accuracy per epoch, mean over each variant's
seeds; (right) each variant's final validation accuracy per seed, and the test accuracy of the runs that were
evaluated on the test split (`compare_recipes --evaluate-test`), against the 99.70% target.
"""

import argparse
import glob
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minivision_hf.training import existing_file, output_file, write_file  # noqa: E402

TARGET = 0.997


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search", nargs="*", type=existing_file,
                   help="validation-search records (default: records/recipe_search*.json)")  # fmt: skip
    p.add_argument("--tested", nargs="*", type=existing_file,
                   help="test-evaluated records (default: records/recipes_best*.json)")  # fmt: skip
    p.add_argument("--out", type=output_file, default="assets/recipe_search.png", help="PNG file to write")
    args = p.parse_args(argv)
    args.search = args.search if args.search is not None else sorted(glob.glob("records/recipe_search*.json"))
    args.tested = args.tested if args.tested is not None else sorted(glob.glob("records/recipes_best*.json"))
    try:  # a file of another kind is one line, not a KeyError's traceback; no run at all, not an empty plot
        args.search_runs, args.tested_runs = load_runs(args.search), load_runs(args.tested)
    except ValueError as error:
        p.error(str(error))
    if not any(args.search_runs.values()):
        p.error(f"no runs to plot in --search {' '.join(args.search) or '(no records/recipe_search*.json here)'}")
    return args


def load_runs(paths: list[str]) -> dict[str, list[dict]]:
    """Runs by variant name, in the order the records list them (a run's curve holds per-epoch `ema_accuracy` when it
    kept an EMA, else `test_accuracy`: the evaluation set's accuracy, i.e. the validation rows in a search)."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            for run in record["runs"]:
                runs.setdefault(run.get("variant") or run["recipe"], []).append(run)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            what = f"{type(error).__name__}: {error}"
            raise ValueError(f"{path} is not a record of scripts/compare_recipes.py ({what})") from None
    return runs


def kept_curve(run: dict) -> tuple[list[int], list[float]]:
    key = "ema_accuracy" if run.get("kept") == "ema" else "test_accuracy"
    points = [(row["epoch"], row[key]) for row in run.get("curve", []) if row.get(key) is not None]
    return [e for e, _ in points], [a for _, a in points]


def main(argv=None) -> Path:
    args = parse_args(argv)  # it read and checked the records
    search, tested = args.search_runs, args.tested_runs
    # a run's one test evaluation, by its folder (a comparison may name the variant otherwise, e.g. `--as best`)
    test_of = {r["output_dir"]: r["accuracy"] for runs in tested.values() for r in runs if r.get("accuracy")}
    # the curves' legend goes under both panels, 4 columns: one entry per variant (dozens) would cover a panel
    legend_rows = math.ceil(len(search) / 4)
    legend_height = 0.25 + 0.17 * legend_rows  # inches
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2 + legend_height), dpi=120,
                                      gridspec_kw={"width_ratios": [1.2, 1]})  # fmt: skip
    for name, runs in search.items():
        curves = [kept_curve(r) for r in runs]
        length = min(len(xs) for xs, _ in curves)
        mean = np.mean([ys[:length] for _, ys in curves], axis=0) * 100
        left.plot(curves[0][0][:length], mean, linewidth=1.3, label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})")
    left.set(xlabel="epoch", ylabel="validation accuracy, kept weights (%)", ylim=(99.0, 99.75),
             title="Recipe search on 5,000 held-out training rows")  # fmt: skip
    left.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    names, labelled = list(search), False
    for i, name in enumerate(names):
        val = [r["val_accuracy"] * 100 for r in search[name] if r.get("val_accuracy") is not None]
        right.scatter([i] * len(val), val, color="tab:blue", s=18, label="validation, per seed" if i == 0 else None)
        test = [test_of[r["output_dir"]] * 100 for r in search[name] if r.get("output_dir") in test_of]
        if test:
            label = None if labelled else "test, per seed (evaluated once), and mean"
            right.scatter([i + 0.15] * len(test), test, color="tab:red", marker="x", s=24, label=label)
            labelled = True
            right.hlines(np.mean(test), i - 0.1, i + 0.4, color="tab:red", linewidth=1)
    right.axhline(TARGET * 100, color="gray", linestyle="--", linewidth=1, label="target 99.70% (test mean)")
    right.set_xticks(range(len(names)), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    right.set(ylabel="accuracy (%)", title="Final accuracy per variant")
    right.grid(alpha=0.3, axis="y")
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    out = Path(args.out)
    write_file(out, lambda tmp: fig.savefig(tmp, format="png"))  # atomic: never half a PNG
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
