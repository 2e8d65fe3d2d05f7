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
    # recipe search on a validation split held out of the training split (the test split is not touched):
    # each --variant is NAME RECIPE "extra train.py flags"
    python -m scripts.compare_recipes --val-size 5000 --no-test --seeds 1 --dataset ../shared/data/mnist \
        --variant plus-ema plus "--ema-decay 0.999" --variant plus-ema-50 plus "--ema-decay 0.999 --epochs 50" \
        --output records/recipe_search.json
    # then, once the choice is made on the validation rows, the chosen runs' one evaluation on the test split
    python -m scripts.compare_recipes --evaluate-test records/recipe_search_k.json --only plus-ema-ls0 --as best \
        --dataset ../shared/data/mnist --output records/recipes_best.json

Each run is `scripts/train.py` (Trainer) followed by `scripts/eval_model.py`'s evaluation of the kept model on the
whole test split, in fp32 through the image processor. Runs are saved under --work-dir/<recipe>-<path>-seed<k>
(<variant>-seed<k> for --variant). With --val-size, every run evaluates on rows held out of the training split
(data.validation_split) during training; its `val_*` figures and per-epoch curve are recorded, and the test split is
evaluated once at the end of the run unless --no-test (a search that must not look at the test set).
"""

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

from transformers import AutoImageProcessor, AutoModelForImageClassification

from minivision_hf.data import DEFAULT_DATASET, load_mnist
from minivision_hf.training import (
    RECIPES,
    REPO_ROOT,
    Recipe,
    checkpoints,
    dataset_source,
    existing_file,
    output_file,
    recipe_from_args,
    run_identity,
    write_json,
)
from scripts import eval_model, train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["seed", "plus"], choices=sorted(RECIPES))
    p.add_argument("--data-paths", nargs="+", default=["fast"], choices=["fast", "plain"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=float, default=None, help="override every recipe's epochs (shorter comparisons)")
    p.add_argument("--dataset", type=dataset_source, default=DEFAULT_DATASET)
    p.add_argument("--work-dir", default="outputs/compare")
    p.add_argument("--output", type=output_file, default="records/recipes.json")
    p.add_argument("--smoke", action="store_true", help="tiny runs (train.py --smoke) for CI")
    p.add_argument("--merge", nargs="+", type=existing_file, default=None,
                   help="combine existing comparison JSONs instead of training")  # fmt: skip
    p.add_argument("--variant", nargs=3, action="append", default=None, metavar=("NAME", "RECIPE", "FLAGS"),
                   help="a named variant: a recipe plus extra train.py flags (quoted); replaces --recipes")  # fmt: skip
    p.add_argument("--val-size", type=int, default=None, help="hold out this many training rows for validation")
    p.add_argument("--evaluate-test", nargs="+", type=existing_file, default=None, metavar="RECORD",
                   help="evaluate the finished runs of --no-test records on the test split (once), then summarise")
    p.add_argument("--only", default=None, help="--evaluate-test: only the runs of this variant")
    p.add_argument("--as", dest="as_recipe", default=None, choices=sorted(RECIPES),
                   help="--evaluate-test: the runs are this recipe (their values must equal it); names the group")
    p.add_argument("--test", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate each finished run on the test split (--no-test for a validation-only search)")
    args = p.parse_args(argv)
    for flag, value in (("--only", args.only), ("--as", args.as_recipe)):
        if value is not None and not args.evaluate_test:
            p.error(f"{flag} {value} applies to --evaluate-test only")
    names = [name for name, _, _ in args.variant or []]
    for flag, values in (("--seeds", args.seeds), ("--recipes", args.recipes), ("--data-paths", args.data_paths),
                         ("--variant", names)):  # fmt: skip
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:  # one run (one folder) counted as several seeds, or two variants trained into one folder
            p.error(f"{flag}: {', '.join(repeated)} given more than once")
    return args


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


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    summary = {"epochs": runs[0]["epochs"], "seeds": [r["seed"] for r in runs]}
    if all(r.get("accuracy") is not None for r in runs):  # test figures (absent in a --no-test search)
        accuracies = [r["accuracy"] for r in runs]
        summary.update(
            accuracies=accuracies,
            losses=[r["loss"] for r in runs],
            accuracy_mean=mean_std(accuracies)[0],
            accuracy_std=mean_std(accuracies)[1],
            loss_mean=statistics.mean(r["loss"] for r in runs),
        )
    if all(r.get("val_accuracy") is not None for r in runs):
        val = [r["val_accuracy"] for r in runs]
        summary.update(val_accuracies=val, val_accuracy_mean=mean_std(val)[0], val_accuracy_std=mean_std(val)[1])
        if all(r.get("val_accuracy_live") is not None for r in runs):
            summary["val_accuracy_live_mean"] = statistics.mean(r["val_accuracy_live"] for r in runs)
    summary["train_wall_s_mean"] = statistics.mean(r["train_wall_s"] for r in runs)
    summary["notes"] = runs[0].get("notes") or RECIPES[runs[0]["recipe"]].notes
    return summary


def evaluate_test(record_paths: list[str], dataset: str, output: Path, command: str, only: str | None = None,
                  as_recipe: str | None = None) -> dict:  # fmt: skip
    """The test-split evaluation of runs already trained and compared on validation rows (`--no-test`): each run's
    kept weights once, with ECE and TTA (reported separately) from scripts/eval_model.py."""
    records = [json.loads(Path(path).read_text()) for path in record_paths]
    record = records[0]
    runs = [run for r in records for run in r["runs"] if only is None or run.get("variant") == only]
    if not runs:  # else `output` was replaced by a record of no runs
        variants = sorted({run.get("variant") or run["recipe"] for r in records for run in r["runs"]})
        which = f"--only {only}: no run of {', '.join(record_paths)} is of that variant" if only else \
            f"{', '.join(record_paths)} hold no runs"  # fmt: skip
        raise SystemExit(f"compare_recipes.py: error: {which} (they hold {', '.join(variants) or 'no runs'}); "
                         f"{output} was left as it was")  # fmt: skip
    if as_recipe:
        expected = {k: v for k, v in dataclasses.asdict(RECIPES[as_recipe]).items() if k != "notes"}
        for run in runs:
            found = {k: v for k, v in run["recipe_values"].items() if k != "notes"}
            if {k: expected.get(k) for k in found} != found:  # fields added to Recipe later keep their defaults
                raise SystemExit(f"{run['output_dir']} was not trained with recipe {as_recipe!r}: {found}")
    # Runs already evaluated in `output` keep their figures: each run meets the test split once, even when the
    # record grows by later seeds.
    done = {r["output_dir"]: r for r in json.loads(output.read_text())["runs"]} if output.exists() else {}
    test_set = load_mnist(dataset, "test")
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if run["output_dir"] in done and done[run["output_dir"]].get("accuracy") is not None:
            groups.setdefault(as_recipe or run.get("variant") or run["recipe"], []).append(done[run["output_dir"]])
            print(f"{run['output_dir']}: already evaluated, test accuracy {done[run['output_dir']]['accuracy']:.4f}")
            continue
        model = AutoModelForImageClassification.from_pretrained(run["output_dir"])
        processor = AutoImageProcessor.from_pretrained(run["output_dir"])
        result = eval_model.evaluate_model(model, processor, test_set, progress=False, tta=True)
        run = {**run, **{k: result[k] for k in ("accuracy", "loss", "ece", "tta_accuracy")}}
        groups.setdefault(as_recipe or run.get("variant") or run["recipe"], []).append(run)
        print(f"{run['output_dir']}: test accuracy {run['accuracy']:.4f} (TTA {run['tta_accuracy']:.4f})", flush=True)
    summary = {
        "description": record["description"].replace("; the test split was not evaluated (validation-only search)", "")
        + " The test split was evaluated once per run, after the choice was made on the validation rows.",
        "dataset": record["dataset"],
        "recipes": {name: summarize(runs) for name, runs in groups.items()},
        "runs": [run for runs in groups.values() for run in runs],
        "trained_by": [r["command"] for r in records],
        "command": command,
    }
    for name, runs in groups.items():
        tta = [r["tta_accuracy"] for r in runs]
        summary["recipes"][name].update(tta_accuracy_mean=statistics.mean(tta), tta_accuracies=tta,
                                        ece_mean=statistics.mean(r["ece"] for r in runs))  # fmt: skip
    write_json(output, summary)
    return summary


def finished_run(out: Path, cli: list[str]) -> dict | None:
    """The run record in `out` when a run with these train.py arguments finished there (same recipe values, data,
    seed and processes: `run_identity`), else None."""
    # --resume: the folder holds that run's checkpoints; parsing also finishes a final save a kill interrupted
    args = train.parse_args([*cli, "--resume"])
    record_file = out / "run_record.json"
    if not record_file.exists():
        return None
    record = json.loads(record_file.read_text())
    try:
        recorded = argparse.Namespace(**record["args"])
        done = run_identity(recorded, Recipe(**record["recipe_values"]), record["processes"])
    except (KeyError, TypeError):  # a record from older code
        return None
    same_stop = all(record["args"].get(name) == getattr(args, name) for name in ("max_steps", "target_accuracy"))
    if not same_stop or done != run_identity(args, recipe_from_args(args), record["processes"]):
        return None
    print(f"{out}: reusing the finished run (delete the folder to train it again)")
    return record


def train_cli(args: argparse.Namespace, recipe: str, path: str, extra: list[str], seed: int, out: Path) -> list[str]:
    """The scripts/train.py arguments of one run of the comparison."""
    cli = ["--recipe", recipe, "--data-path", path, "--seed", str(seed), "--dataset", args.dataset,
           "--output-dir", str(out), "--no-progress", "--save-total-limit", "1"]  # fmt: skip
    if args.epochs is not None:
        cli += ["--epochs", str(args.epochs)]
    if args.val_size is not None:
        cli += ["--val-size", str(args.val_size)]
    if args.smoke:
        cli += ["--smoke"]
    return cli + extra  # last, so a variant's own flags win


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.output))
    if args.evaluate_test:
        command = "python -m scripts.compare_recipes " + shlex.join(argv if argv is not None else sys.argv[1:])
        return evaluate_test(args.evaluate_test, args.dataset, Path(args.output), command, args.only, args.as_recipe)
    # (group name, recipe, data path, extra train.py flags, work-dir prefix)
    if args.variant:
        plan = [(name, recipe, args.data_paths[0], shlex.split(flags), name) for name, recipe, flags in args.variant]
    else:
        plan = [
            (recipe if len(args.data_paths) == 1 else f"{recipe} / {path} path", recipe, path, [], f"{recipe}-{path}")
            for recipe in args.recipes
            for path in args.data_paths
        ]
    trained_here = set()  # run folders of this comparison: a later run may distill from an earlier one's
    for name, recipe, path, extra, prefix in plan:  # every run's flags checked before the first run trains
        for seed in args.seeds:
            out = Path(args.work_dir) / f"{prefix}-seed{seed}"
            # A teacher that an earlier run here trains does not exist yet: checked as the release it will resemble.
            checked = [str(REPO_ROOT) if Path(flag).absolute() in trained_here else flag for flag in extra]
            trained_here.add(out.absolute())
            try:
                train.parse_args([*train_cli(args, recipe, path, checked, seed, out), "--resume"])
            except SystemExit:
                print(f"compare_recipes.py: error: run {name} seed {seed} ({out}): train.py refused its arguments "
                      "(above); nothing was trained", file=sys.stderr)  # fmt: skip
                raise
    try:
        test_set = load_mnist(args.dataset, "test") if args.test else None
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # missing, offline, not MNIST, no such split
        scripts.usage_error("compare_recipes.py", str(err))
    groups: dict[str, list[dict]] = {}
    for name, recipe, path, extra, prefix in plan:
        for seed in args.seeds:
            out = Path(args.work_dir) / f"{prefix}-seed{seed}"
            cli = train_cli(args, recipe, path, extra, seed, out)
            start = time.perf_counter()
            record = finished_run(out, cli)  # a rerun of the comparison reuses the runs it finished
            if record is None:  # train, continuing a run a kill interrupted (train.py refuses one with other values)
                record = train.main([*cli, "--resume"] if checkpoints(out) else cli)
            result = {"accuracy": None, "loss": None}
            if test_set is not None:
                model = AutoModelForImageClassification.from_pretrained(out)
                processor = AutoImageProcessor.from_pretrained(out)
                result = eval_model.evaluate_model(model, processor, test_set, progress=False)
            held_out = record["recipe_values"].get("val_size", 0) > 0
            run = {
                "recipe": recipe,
                "variant": name,
                "flags": " ".join(extra),
                "notes": f"{recipe} + {' '.join(extra)}" if extra else "",
                "data_path": path,
                "seed": seed,
                "epochs": record["recipe_values"]["epochs"],
                "kept": record["kept"],
                "accuracy": result["accuracy"],
                "loss": result["loss"],
                # the kept weights (EMA, last or best) on the held-out rows, and the live weights' last epoch
                "val_accuracy": record["final_eval"]["accuracy"] if held_out else None,
                "val_loss": record["final_eval"]["loss"] if held_out else None,
                "val_accuracy_live": record["epochs"][-1].get("test_accuracy") if held_out else None,
                "eval_split": record["dataset"]["eval_split"],
                "recipe_values": record["recipe_values"],
                "curve": [
                    {k: e.get(k) for k in ("epoch", "lr", "train_loss", "test_accuracy", "ema_accuracy")}
                    for e in record["epochs"]
                ],
                "output_dir": str(out),
                "train_wall_s": record["train_wall_s"],
                "wall_s": round(time.perf_counter() - start, 1),
                # where it ran: the same seed and code follow another trajectory on another thread count (the
                # reductions' order), so reruns are compared on the threads they used
                "hardware": record.get("hardware"),
                "git": record.get("git"),
            }
            groups.setdefault(name, []).append(run)
            shown = {k: run[k] for k in ("accuracy", "loss", "val_accuracy", "val_accuracy_live") if run[k]}
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()), flush=True)
            summary = {
                "description": "Each row: independent full training runs (one per seed) of the same "
                "architecture, evaluated on the 10,000-image MNIST test split"
                + (f"; choices made on {args.val_size} rows held out of the training split (val_*)"
                   if args.val_size else "")
                + ("" if args.test else "; the test split was not evaluated (validation-only search)")
                + ".",
                "dataset": str(args.dataset),
                "recipes": {name: summarize(runs) for name, runs in groups.items()},
                "runs": [run for runs in groups.values() for run in runs],
                "command": thread_settings() + "python -m scripts.compare_recipes "
                + shlex.join(argv if argv is not None else sys.argv[1:]),
            }
            write_json(Path(args.output), summary)  # after every run: an interrupted comparison keeps its runs
    for name, s in summary["recipes"].items():
        for key in ("accuracy", "val_accuracy"):
            if f"{key}_mean" in s:
                print(f"{name:>24}: {key} {s[f'{key}_mean']:.4%} ± {s[f'{key}_std']:.4%} over {len(s['seeds'])} seeds")
    return summary


def thread_settings() -> str:
    """The thread-count variables a comparison ran under, as a command prefix ("OMP_NUM_THREADS=1 "; "" when unset):
    the same seed follows another trajectory on another number of threads, so a rerun needs them too."""
    return "".join(f"{name}={shlex.quote(os.environ[name])} " for name in ("OMP_NUM_THREADS",) if name in os.environ)


if __name__ == "__main__":
    main()
