"""Turn one training run into a shipped variant folder (default `variants/best/`): weights, configs, code, records,
its own generated model card. The repo root stays the seed recipe's release; push_to_hub publishes each variant as a
branch of the model repo (`revision="best"`).

    python -m scripts.make_variant --run outputs/search/plus-ema-ls0-seed1 --name best --recipe best \
        --dataset ../shared/data/mnist --comparison records/recipes_best.json --search records/recipe_search_*.json

Steps, in order:
1. load the run's kept weights (save_pretrained folder written by scripts/train.py; for the `best` recipe, the EMA);
2. fit a softmax temperature T on the run's validation rows (held out of the training split, rebuilt exactly from the
   run record with data.validation_split) by minimising their cross-entropy, and store it in config.json as
   `calibration_temperature` (the logits are unchanged; the Space and scripts/eval_model.py divide by it);
3. save_pretrained the model and image processor into the variant folder (code files included, auto_map complete);
4. evaluate the variant on the test split, once, with ECE and TTA reported separately (records/eval_test.json), and
   record the calibration fit (records/calibration.json);
5. copy the run record and the comparison records, plot the curves, write the variant's model_card.md.
Steps 3-5 fill a staging folder beside the variant folder, which then replaces it whole (files of the old folder that
the run does not write are kept): a killed run leaves the old variant, never new weights beside old records and card.
"""

import argparse
import dataclasses
import json
import math
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf  # noqa: F401  (registers the Auto classes)
from minivision_hf.data import load_mnist, validation_split
from minivision_hf.training import (
    RECIPES,
    existing_file,
    git_commit,
    model_source,
    replace_folder,
    replaced_folder,
    write_json,
)
from scripts import eval_model, make_model_card, plot_curves

ROOT = Path(__file__).resolve().parent.parent


def variant_name(text: str) -> str:
    """argparse type of --name: a folder under variants/ and a Hub branch, so one plain name (no "/", not empty)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) or text.endswith((".", ".lock")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a variant name: letters, digits, '.', '_', '-' (a folder "
                                         "under variants/ and a Hub branch)")  # fmt: skip
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="output dir of scripts/train.py (with run_record.json)")
    p.add_argument("--name", type=variant_name, default="best", help="folder variants/<name>, Hub branch <name>")
    p.add_argument("--out", type=replaced_folder, default=None, help="variant folder (default: variants/<name>)")
    p.add_argument("--dataset", default="ylecun/mnist", help="Hub id or local copy of MNIST")
    p.add_argument("--comparison", type=existing_file, default=None, help="the recipe's seeds (compare_recipes JSON)")
    p.add_argument("--search", nargs="*", type=existing_file, default=[], help="recipe-search JSONs (variants table)")
    p.add_argument("--repo-id", default=make_model_card.DEFAULT_REPO_ID, help="Hub id for the card's snippets")
    p.add_argument("--no-temperature", action="store_true", help="do not fit or store a temperature")
    p.add_argument("--recipe", default=None,
                   help="RECIPES name the run's values must equal (a run made as `plus` + flags may be `best`)")
    p.add_argument("--seed-release", type=model_source, default=str(ROOT), help="the seed release (evaluated too)")
    p.add_argument("--refresh-records", action="store_true",
                   help="only copy --comparison/--search into an existing variant and regenerate its card (later "
                        "seeds and variants: no weights change, nothing is evaluated again)")  # fmt: skip
    args = p.parse_args(argv)
    if not (Path(args.run) / "run_record.json").is_file():
        p.error(f"--run {args.run}: not a finished training run (no run_record.json)")
    return args


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising mean cross-entropy of logits / T: a log-spaced grid, then golden-section refinement
    (the loss is unimodal in log T for a fixed set of logits)."""

    def nll(log_t: float) -> float:
        return torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels).item()

    grid = [math.log(0.05) + i * (math.log(20.0) - math.log(0.05)) / 200 for i in range(201)]
    best = min(range(len(grid)), key=lambda i: nll(grid[i]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return round(math.exp((lo + hi) / 2), 4)


def validation_rows(record: dict, dataset: str):
    """The rows the run held out of its training split (the split is rebuilt from the run record)."""
    values, args = record["recipe_values"], record["args"]
    if not values.get("val_size"):
        raise SystemExit("the run held out no validation rows (val_size 0): a temperature cannot be fitted honestly")
    train = load_mnist(dataset, args.get("train_split", "train"), args.get("max_train_samples"))
    _, val_rows = validation_split(len(train), values["val_size"], args.get("val_seed", 0))
    return train.select(val_rows.tolist())


def staged_records(out: Path, folder: Path) -> Path:
    """records/ of the variant staged in `folder`: a copy of the current variant's (the records this run does not
    write stay), which the run then writes over. Copies, not links: writing the staged files leaves the old ones."""
    records = folder / "records"
    if (out / "records").is_dir():
        shutil.copytree(out / "records", records, symlinks=True)
    else:
        records.mkdir(parents=True)
    return records


def main(argv=None) -> Path:
    args = parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else ROOT / "variants" / args.name
    if args.refresh_records:
        drawn = ROOT / "records" / "app_drawn_accuracy.json"  # scripts/app_drawn_accuracy.py, both served models

        def refresh(folder: Path) -> None:
            records = staged_records(out, folder)
            for source in [args.comparison, *args.search, drawn if drawn.exists() else None]:
                if source:
                    shutil.copyfile(source, records / Path(source).name)
            make_model_card.main(["--records", str(records), "--output", str(folder / "model_card.md"),
                                  "--repo-id", args.repo_id, "--variant", args.name])  # fmt: skip

        replace_folder(out, refresh, keep=("*",))
        return out
    record = json.loads((run / "run_record.json").read_text())
    recipe_name = args.recipe or record["recipe"]
    if args.recipe:
        expected = {k: v for k, v in dataclasses.asdict(RECIPES[args.recipe]).items() if k != "notes"}
        found = {k: v for k, v in record["recipe_values"].items() if k != "notes"}
        if {k: expected.get(k) for k in found} != found:  # fields added to Recipe later keep their defaults
            diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
            raise SystemExit(f"the run's recipe values differ from RECIPES[{args.recipe!r}] (run, recipe): {diff}")
    model = AutoModelForImageClassification.from_pretrained(run).eval()
    processor = AutoImageProcessor.from_pretrained(run)

    # ---- calibration on the validation rows (never the test split) ----
    calibration = {"fitted_on": None, "temperature": None}
    if not args.no_temperature:
        val = validation_rows(record, args.dataset)
        logits, labels, _ = eval_model.collect_logits(model, processor, val, progress=False)
        temperature = fit_temperature(logits, labels)
        scaled = logits / temperature
        calibration = {
            "fitted_on": record["dataset"]["eval_split"],
            "num_samples": len(labels),
            "temperature": temperature,
            "val_accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "val_loss": torch.nn.functional.cross_entropy(logits, labels).item(),
            "val_loss_temperature": torch.nn.functional.cross_entropy(scaled, labels).item(),
            "val_ece": eval_model.expected_calibration_error(logits.softmax(-1), labels),
            "val_ece_temperature": eval_model.expected_calibration_error(scaled.softmax(-1), labels),
            "ece_bins": eval_model.ECE_BINS,
            "method": "temperature scaling (Guo et al. 2017): T = argmin cross-entropy(logits / T), validation rows",
        }
        model.config.calibration_temperature = temperature  # read by eval_model.py and the Space; logits stay raw
        print(f"temperature {temperature} (val ECE {calibration['val_ece']:.4f} -> "
              f"{calibration['val_ece_temperature']:.4f})")  # fmt: skip

    command = "python -m scripts.make_variant " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(folder: Path) -> None:
        # ---- the variant folder ----
        records = staged_records(out, folder)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        shutil.copyfile(run / "run_record.json", records / "run_record.json")
        if (run / "tensorboard").exists():
            shutil.rmtree(records / "tensorboard", ignore_errors=True)
            shutil.copytree(run / "tensorboard", records / "tensorboard")
        for source in [args.comparison, *args.search]:
            if source:
                shutil.copyfile(source, records / Path(source).name)
        write_json(records / "calibration.json", {**calibration, "run": str(run), "git": git_commit()})
        write_json(records / "variant.json", {"name": args.name, "recipe": recipe_name, "run": str(run),
                                              "seed": record["seed"], "command": command})  # fmt: skip

        # ---- the one test evaluation of the shipped weights (TTA separately), as staged: the bytes shipped ----
        result = eval_model.main(["--model", str(folder), "--dataset", args.dataset, "--tta", "--no-progress"])
        write_json(records / "eval_test.json", {**result, "model": str(out)})  # the variant's name, not the staging
        eval_model.main(["--model", args.seed_release, "--dataset", args.dataset, "--tta", "--no-progress",
                         "--output", str(records / "eval_seed_release.json")])  # fmt: skip
        plot_curves.main(["--record", str(records / "run_record.json"), "--eval", str(records / "eval_test.json"),
                          "--out", str(folder / "assets")])  # fmt: skip
        make_model_card.main(["--records", str(records), "--output", str(folder / "model_card.md"), "--repo-id",
                              args.repo_id, "--variant", args.name])  # fmt: skip

    # Built whole in a staging folder beside `out`, then swapped in (files of the old folder it does not write are
    # kept): a kill leaves the old variant or the new one, never new weights beside the old records and card.
    replace_folder(out, write, keep=("*",))
    print(f"wrote variant {args.name!r} to {out}")
    return out


if __name__ == "__main__":
    main()
