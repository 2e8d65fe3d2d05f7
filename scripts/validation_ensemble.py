"""How much headroom the finished search runs leave: each run's accuracy on the validation rows it held out, and the
accuracy of their ensemble (softmax averaged) on the same rows. If even the ensemble gains nothing, the runs share
their errors, and a recipe change that only reshuffles them (another seed, distillation from those runs) cannot lift
the single model much. Validation rows only: the test split is not touched.

    python -m scripts.validation_ensemble --dataset ../shared/data/mnist --output records/validation_ensemble.json \
        outputs/search/plus-ema-seed1 outputs/search/plus-ema-seed2 ...
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf  # noqa: F401  (registers the Auto classes)
from minivision_hf.training import output_file, write_json
from scripts.eval_model import collect_logits
from scripts.make_variant import validation_rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (save_pretrained + run_record.json)")
    p.add_argument("--dataset", default="ylecun/mnist")
    p.add_argument("--output", type=output_file, default=None, help="JSON file to write")
    args = p.parse_args(argv)
    missing = [run for run in args.runs if not (Path(run) / "run_record.json").is_file()]
    if missing:
        p.error(f"not a finished run (no run_record.json): {', '.join(missing)}")
    folders = [Path(run).resolve() for run in args.runs]
    if len(set(folders)) < len(folders):  # the ensemble would count it twice, the result name it once
        p.error(f"a run is named twice: {' '.join(args.runs)}")
    if len({folder.name for folder in folders}) < len(folders):  # results are keyed by the folders' names
        p.error(f"runs in folders of the same name cannot be told apart in the result: {' '.join(args.runs)}")
    output = Path(args.output or "").resolve()
    if args.output and output.exists() and any(folder in output.parents for folder in folders):
        p.error(f"--output {args.output} is a file of a run compared (an input): write the result elsewhere")
    args.records = []
    for run in args.runs:
        try:
            args.records.append(json.loads((Path(run) / "run_record.json").read_text()))
            held_out_rows(args.records[-1])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            p.error(f"{run}/run_record.json is not a run record of scripts/train.py ({type(error).__name__}: {error})")
    return args


def held_out_rows(record: dict) -> tuple[int, int]:
    """(val_size, val_seed) a run held out, from its run record; every run compared must share them."""
    return int(record["recipe_values"]["val_size"]), int(record["args"].get("val_seed", 0))


def main(argv=None) -> dict:
    args = parse_args(argv)  # it read and checked the runs' records
    runs, records = [Path(r) for r in args.runs], args.records
    splits = {held_out_rows(record) for record in records}
    if len(splits) != 1 or 0 in {size for size, _ in splits}:
        raise SystemExit(f"the runs must hold out the same validation rows, found (val_size, val_seed) {splits}")
    (val_size, val_seed), = splits
    val = validation_rows(records[0], args.dataset)  # the rows the runs held out, rebuilt as make_variant does
    probs, per_run = {}, {}
    for run in runs:
        model = AutoModelForImageClassification.from_pretrained(run).eval()
        processor = AutoImageProcessor.from_pretrained(run)
        with torch.no_grad():
            logits, labels, _ = collect_logits(model, processor, val, progress=False)
        probs[run.name] = logits.softmax(-1)
        per_run[run.name] = (logits.argmax(-1) == labels).float().mean().item()
        print(f"{run.name}: {per_run[run.name]:.2%}")
    names = list(probs)
    errors = {name: set(torch.nonzero(probs[name].argmax(-1) != labels).flatten().tolist()) for name in names}
    ensemble = (sum(probs.values()) / len(probs)).argmax(-1)
    result = {
        "description": "accuracy on the held-out validation rows of each run and of their softmax-averaged ensemble",
        "validation": {"val_size": val_size, "val_seed": val_seed},
        "runs": per_run,
        "single_mean": sum(per_run.values()) / len(per_run),
        "single_best": max(per_run.values()),
        "ensemble_accuracy": (ensemble == labels).float().mean().item(),
        "errors_in_every_run": len(set.intersection(*errors.values())),
        "errors_per_run": {name: len(e) for name, e in errors.items()},
        "pairwise_shared_errors_mean": sum(len(errors[a] & errors[b]) for a, b in itertools.combinations(names, 2))
        / max(1, len(names) * (len(names) - 1) // 2),
        "command": "python -m scripts.validation_ensemble " + " ".join(sys.argv[1:]),
    }
    print(f"ensemble of {len(names)}: {result['ensemble_accuracy']:.2%} (single mean {result['single_mean']:.2%}, "
          f"best {result['single_best']:.2%}); {result['errors_in_every_run']} rows wrong in every run")  # fmt: skip
    if args.output:
        write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
