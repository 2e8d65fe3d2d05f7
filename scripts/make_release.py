"""Turn a training run into the release at the repo root, with its records, plots and generated model card.

    python -m scripts.make_release --run outputs/seed --dataset ../shared/data/mnist
    python -m scripts.make_release --init           # an untrained, initialised release (for a fresh checkout)

Copies config.json, model.safetensors and preprocessor_config.json from --run to the repo root, the run record and
TensorBoard events to records/, evaluates the root release on the test split (records/eval_test.json), plots
assets/*.png and writes model_card.md. The root's *_minivision.py files are links into minivision_hf/, so the root
also loads as remote code (`trust_remote_code=True`).
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

import torch

import minivision_hf as mv
from scripts import eval_model, make_model_card, plot_curves

ROOT = Path(__file__).resolve().parent.parent
RELEASE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
CODE_FILES = ("configuration_minivision.py", "modeling_minivision.py", "image_processing_minivision.py",
              "pipeline_minivision.py")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="outputs/seed", help="output dir of scripts/train.py")
    p.add_argument("--dataset", default="ylecun/mnist", help="for the evaluation (Hub id or local copy)")
    p.add_argument("--root", default=str(ROOT), help="release folder (default: the repo root)")
    p.add_argument("--init", action="store_true", help="write an initialised, untrained release instead")
    return p.parse_args(argv)


def link_code_files(root: Path) -> None:
    for name in CODE_FILES:
        link = root / name
        link.unlink(missing_ok=True)
        link.symlink_to(Path("minivision_hf") / name)


def write_init_release(out: Path) -> None:
    torch.manual_seed(0)
    mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).save_pretrained(out)
    mv.MiniVisionImageProcessor().save_pretrained(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    root, run = Path(args.root), Path(args.run)
    if args.init:
        with tempfile.TemporaryDirectory() as tmp:
            write_init_release(Path(tmp))
            for name in RELEASE_FILES:
                shutil.copyfile(Path(tmp) / name, root / name)
        link_code_files(root)
        print(f"wrote an untrained release to {root}")
        return
    missing = [name for name in (*RELEASE_FILES, "run_record.json") if not (run / name).exists()]
    if missing:
        raise SystemExit(f"{run} is not a finished training run: missing {missing}")
    for name in RELEASE_FILES:
        shutil.copyfile(run / name, root / name)
    link_code_files(root)
    records = root / "records"
    records.mkdir(exist_ok=True)
    shutil.copyfile(run / "run_record.json", records / "run_record.json")
    if (run / "tensorboard").exists():
        shutil.rmtree(records / "tensorboard", ignore_errors=True)
        shutil.copytree(run / "tensorboard", records / "tensorboard")
    eval_model.main(["--model", str(root), "--dataset", args.dataset, "--output", str(records / "eval_test.json"),
                   "--no-progress"])  # fmt: skip
    plot_curves.main(["--record", str(records / "run_record.json"), "--eval", str(records / "eval_test.json"),
                      "--out", str(root / "assets")])  # fmt: skip
    make_model_card.main(["--records", str(records), "--output", str(root / "model_card.md")])


if __name__ == "__main__":
    main()
