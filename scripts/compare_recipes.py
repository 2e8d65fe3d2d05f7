"""Train several recipes / data paths over several seeds and report test accuracy as mean ± std.

    # the seed card's recipe against the stronger one, 3 seeds each (full schedules; ~1 h on 2 CPU cores)
    python -m scripts.compare_recipes --recipes seed plus --seeds 1 2 3 --dataset ../shared/data/mnist \
        --output records/recipes.json
    # the plain (per-sample PIL, fp32) and fast (batched, bf16) data paths reach the same accuracy
    python -m scripts.compare_recipes --recipes seed --data-paths plain fast --seeds 1 2 --epochs 6 \
        --dataset ../shared/data/mnist --output records/data_paths.json
    python -m scripts.compare_recipes --smoke --dataset tests/fixtures/mnist_tiny --output /tmp/r.json   # CI
    # comparisons run separately (e.g. one recipe at a time) combined into one record
    python -m scripts.compare_recipes --merge records/recipes_seed.json records/recipes_plus.json \
        --output records/recipes.json

Each run is `scripts/train.py` (Trainer) followed by `scripts/eval_model.py`'s evaluation of the kept model on the
whole test split, in fp32 through the image processor. Runs are saved under --work-dir/<recipe>-<path>-seed<k>.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

from transformers import AutoImageProcessor, AutoModelForImageClassification

from minivision_hf.data import DEFAULT_DATASET, load_mnist
from minivision_hf.training import RECIPES, write_json
from scripts import eval_model, train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["seed", "plus"], choices=sorted(RECIPES))
    p.add_argument("--data-paths", nargs="+", default=["fast"], choices=["fast", "plain"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=None, help="override every recipe's epochs (shorter comparisons)")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--work-dir", default="outputs/compare")
    p.add_argument("--output", default="records/recipes.json")
    p.add_argument("--smoke", action="store_true", help="tiny runs (train.py --smoke) for CI")
    p.add_argument("--merge", nargs="+", default=None, help="combine existing comparison JSONs instead of training")
    return p.parse_args(argv)


def merge(paths: list[str], output: Path) -> dict:
    parts = [json.loads(Path(path).read_text()) for path in paths]
    summary = {
        "description": parts[0]["description"],
        "dataset": parts[0]["dataset"],
        "recipes": {name: s for part in parts for name, s in part["recipes"].items()},
        "runs": [run for part in parts for run in part["runs"]],
        "command": "; ".join(part["command"] for part in parts),
        "merged_from": list(paths),
    }
    write_json(output, summary)
    return summary


def summarize(runs: list[dict]) -> dict:
    accuracies = [r["accuracy"] for r in runs]
    return {
        "epochs": runs[0]["epochs"],
        "accuracies": accuracies,
        "losses": [r["loss"] for r in runs],
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "loss_mean": statistics.mean(r["loss"] for r in runs),
        "train_wall_s_mean": statistics.mean(r["train_wall_s"] for r in runs),
        "notes": RECIPES[runs[0]["recipe"]].notes,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.output))
    test_set = load_mnist(args.dataset, "test")
    groups: dict[str, list[dict]] = {}
    for recipe in args.recipes:
        for path in args.data_paths:
            name = recipe if len(args.data_paths) == 1 else f"{recipe} / {path} path"
            for seed in args.seeds:
                out = Path(args.work_dir) / f"{recipe}-{path}-seed{seed}"
                cli = ["--recipe", recipe, "--data-path", path, "--seed", str(seed), "--dataset", args.dataset,
                       "--output-dir", str(out), "--no-progress", "--save-total-limit", "1"]  # fmt: skip
                if args.epochs is not None:
                    cli += ["--epochs", str(args.epochs)]
                if args.smoke:
                    cli += ["--smoke"]
                start = time.perf_counter()
                record = train.main(cli)
                model = AutoModelForImageClassification.from_pretrained(out)
                processor = AutoImageProcessor.from_pretrained(out)
                result = eval_model.evaluate_model(model, processor, test_set, progress=False)
                run = {
                    "recipe": recipe,
                    "data_path": path,
                    "seed": seed,
                    "epochs": record["recipe_values"]["epochs"],
                    "kept": record["kept"],
                    "accuracy": result["accuracy"],
                    "loss": result["loss"],
                    "train_wall_s": record["train_wall_s"],
                    "wall_s": round(time.perf_counter() - start, 1),
                }
                groups.setdefault(name, []).append(run)
                print(f"{name} seed {seed}: accuracy {run['accuracy']:.4f}, loss {run['loss']:.4f}", flush=True)
                summary = {
                    "description": "Each row: independent full training runs (one per seed) of the same "
                    "architecture, evaluated on the 10,000-image MNIST test split.",
                    "dataset": str(args.dataset),
                    "recipes": {name: summarize(runs) for name, runs in groups.items()},
                    "runs": [run for runs in groups.values() for run in runs],
                    "command": "python -m scripts.compare_recipes "
                    + " ".join(argv if argv is not None else sys.argv[1:]),
                }
                write_json(Path(args.output), summary)  # after every run: an interrupted comparison keeps its runs
    for name, s in summary["recipes"].items():
        print(f"{name:>24}: {s['accuracy_mean']:.4%} ± {s['accuracy_std']:.4%} over {len(s['accuracies'])} seeds")
    return summary


if __name__ == "__main__":
    main()
