"""Turn a training run into the release at the repo root, with its records, plots and generated model card.

    python -m scripts.make_release --run outputs/seed --dataset ../shared/data/mnist
    python -m scripts.make_release --init           # an untrained, initialised release (for a fresh checkout)

Copies config.json, model.safetensors and preprocessor_config.json from --run to the repo root, the run record and
TensorBoard events to records/, evaluates the release on the test split (records/eval_test.json), plots assets/*.png
and writes model_card.md. The release's *_minivision.py files make it load as remote code (`trust_remote_code=True`):
at the repo root they are links into minivision_hf/; in any other --root folder, copies (a link would dangle there).

All of it is first built in a staging folder beside the root's files and evaluated there; then every file is moved
into place with one rename each, under a journal: a kill while staging leaves the previous release untouched, and a
kill while moving is completed by the next run of this script (each file is always whole, old or new).
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import torch

import minivision_hf as mv
from minivision_hf.training import move_folder_into_place, output_folder, recover_folder, write_json
from scripts import eval_model, make_model_card, plot_curves

ROOT = Path(__file__).resolve().parent.parent
RELEASE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
CODE_FILES = ("configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
              "pipeline_minivision.py")  # fmt: skip
# The release is built in STAGING beside the files it replaces (same file system), then moved in under a JOURNAL.
STAGING, JOURNAL = ".release-staging", ".release-commit.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="outputs/seed", help="output dir of scripts/train.py")
    p.add_argument("--dataset", default="ylecun/mnist", help="for the evaluation (Hub id or local copy)")
    p.add_argument("--root", type=output_folder, default=str(ROOT),
                   help="release folder, created if missing (default: the repo root, where the code files are links "
                        "into minivision_hf/; anywhere else they are copies)")  # fmt: skip
    p.add_argument("--init", action="store_true", help="write an initialised, untrained release instead")
    return p.parse_args(argv)


def install_code_files(root: Path) -> None:
    """Give the release its code files, each replaced in one rename: at the repo root, relative links into
    minivision_hf/ (they resolve there, and follow the package as it changes); in any other folder, copies, since a
    relative link would dangle there and an absolute one would break when the folder moves or is uploaded."""
    at_repo_root = root.resolve() == ROOT.resolve()
    for name in CODE_FILES:
        source = ROOT / "minivision_hf" / name
        if not source.exists():
            continue
        tmp = root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        if at_repo_root:
            tmp.symlink_to(Path("minivision_hf") / name)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, root / name)


def write_init_release(out: Path) -> None:
    torch.manual_seed(0)
    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(out)
    mv.MiniVisionImageProcessor().save_pretrained(out)


def stage_release(run: Path, root: Path, staging: Path, dataset: str) -> list[str]:
    """Build the whole release in `staging` (weights, records, evaluation, plots, card); returns the paths, relative
    to the root, that it replaces there."""
    for name in RELEASE_FILES:
        shutil.copyfile(run / name, staging / name)
    records = staging / "records"
    # The card also reads records this script does not write (recipes.json, benchmark.json, ...): link them in.
    if (root / "records").is_dir():
        shutil.copytree(root / "records", records, copy_function=os.link, ignore=shutil.ignore_patterns("tensorboard"))
    else:
        records.mkdir()
    (records / "run_record.json").unlink(missing_ok=True)
    shutil.copyfile(run / "run_record.json", records / "run_record.json")
    if (run / "tensorboard").exists():
        shutil.copytree(run / "tensorboard", records / "tensorboard")
    # Evaluated as staged: the same bytes the root will hold. The record names the release folder, not the staging.
    eval_path = records / "eval_test.json"
    eval_path.unlink(missing_ok=True)
    result = eval_model.main(["--model", str(staging), "--dataset", dataset, "--no-progress"])
    write_json(eval_path, {**result, "model": "." if root.resolve() == ROOT else str(root)})
    plots = plot_curves.main(["--record", str(records / "run_record.json"), "--eval", str(eval_path),
                              "--out", str(staging / "assets")])  # fmt: skip
    make_model_card.main(["--records", str(records), "--output", str(staging / "model_card.md")])
    replaced = [*RELEASE_FILES, "records/run_record.json", "records/eval_test.json", "model_card.md"]
    replaced += [f"assets/{p.name}" for p in plots]
    return replaced + (["records/tensorboard"] if (records / "tensorboard").exists() else [])


def commit_release(root: Path, staging: Path, paths: list[str]) -> None:
    """Move the staged paths into the root. Each file is replaced in one rename (never half-written); the list is
    journaled first, so that a kill in the middle is completed by the next run (`finish_release`), not left mixed."""
    journal = root / JOURNAL
    write_json(journal.with_suffix(".tmp"), {"staging": staging.name, "paths": paths})
    os.replace(journal.with_suffix(".tmp"), journal)
    finish_release(root)


def finish_release(root: Path) -> None:
    """Complete a journaled commit: move every staged path still in the staging folder into place, then clean up."""
    journal = root / JOURNAL
    recover_folder(root / "records" / "tensorboard")  # killed inside its fallback swap
    if journal.exists():
        plan = json.loads(journal.read_text())
        staging = root / plan["staging"]
        for rel in plan["paths"]:
            staged, target = staging / rel, root / rel
            if not staged.exists():
                continue  # moved before the interruption
            target.parent.mkdir(parents=True, exist_ok=True)
            if staged.is_dir():
                move_folder_into_place(staged, target)
            else:
                os.replace(staged, target)
        journal.unlink()
    shutil.rmtree(root / STAGING, ignore_errors=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    root, run = Path(args.root), Path(args.run)
    if not args.init:  # the run is checked before anything is written
        if not run.is_dir():
            raise SystemExit(f"no such folder: {run}")
        missing = [name for name in (*RELEASE_FILES, "run_record.json") if not (run / name).exists()]
        if missing:
            raise SystemExit(f"{run} is not a finished training run: missing {missing}")
        try:  # a record of another kind would fail in plot_curves, after the evaluation
            plot_curves.read_json(run / "run_record.json", "a run record of scripts/train.py", plot_curves.RECORD_KEYS)
        except ValueError as error:
            raise SystemExit(str(error)) from None
    if not root.exists():
        print(f"creating the release folder {root}")
        root.mkdir(parents=True)
    finish_release(root)  # a release that a kill interrupted is completed first
    staging = root / STAGING
    staging.mkdir()
    try:
        if args.init:
            write_init_release(staging)
            paths = list(RELEASE_FILES)
        else:
            paths = stage_release(run, root, staging, args.dataset)
    except BaseException:  # failed or interrupted (Ctrl-C, SIGTERM) while staging: the release in place is untouched
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_release(root, staging, paths)
    install_code_files(root)
    if args.init:
        print(f"wrote an untrained release to {root}")
    else:
        print(f"released {run} into {root}: {', '.join(paths)}")


if __name__ == "__main__":
    main()
