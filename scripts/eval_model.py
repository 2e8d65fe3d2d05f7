"""Evaluate a Mini-Vision-V2 model on an MNIST split: accuracy (via the `evaluate` library, offline), loss,
per-class accuracy and the confusion matrix, all through the model's own image processor.

    python -m scripts.eval_model --model . --dataset ../shared/data/mnist --split test --output records/eval_test.json
    python -m scripts.eval_model --model someone/mini-vision-v2 --revision <sha> --trust-remote-code ...

The JSON has top-level `accuracy` and `loss`; a readable table is printed.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf  # noqa: F401  (registers the Auto classes, so local folders need no remote code)
from minivision_hf.data import DEFAULT_DATASET, load_mnist
from minivision_hf.metrics import load_accuracy
from minivision_hf.training import git_commit, versions, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".", help="folder or Hub id (default: the release at the repo root)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha) to pin")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="needed for Hub ids unless the package is installed"
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub id or local folder / parquet")
    p.add_argument("--split", default="test")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--output", default=None, help="JSON file to write")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


@torch.inference_mode()
def evaluate_model(model, processor, dataset, batch_size: int = 1000, progress: bool = True) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix of `model` on a datasets split of MNIST."""
    model.eval()
    labels_all, preds_all, loss_sum = [], [], 0.0
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", disable=not progress):
        batch = dataset[start : start + batch_size]
        pixel_values = processor(batch["image"], return_tensors="pt")["pixel_values"]
        labels = torch.as_tensor(batch["label"])
        logits = model(pixel_values=pixel_values.to(model.dtype)).logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        labels_all.append(labels)
        preds_all.append(logits.argmax(-1))
    labels, preds = torch.cat(labels_all).numpy(), torch.cat(preds_all).numpy()
    num_labels = model.config.num_labels
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    per_class = {
        model.config.id2label[i]: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
        for i in range(num_labels)
    }
    accuracy = load_accuracy().compute(predictions=preds.tolist(), references=labels.tolist())["accuracy"]
    return {
        "accuracy": accuracy,
        "loss": loss_sum / len(labels),
        "num_samples": int(len(labels)),
        "errors": int((preds != labels).sum()),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": [model.config.id2label[i] for i in range(num_labels)],
    }


def format_table(result: dict) -> str:
    lines = [
        f"accuracy {result['accuracy']:.4%}   loss {result['loss']:.4f}   "
        f"errors {result['errors']} / {result['num_samples']}",
        "",
        "true\\pred " + " ".join(f"{label:>5}" for label in result["labels"]) + "   class acc",
    ]
    for label, row in zip(result["labels"], result["confusion_matrix"]):
        acc = result["per_class_accuracy"][label]
        lines.append(f"{label:>9} " + " ".join(f"{v:>5}" for v in row) + f"   {acc:.4f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    kwargs = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    model = AutoModelForImageClassification.from_pretrained(args.model, **kwargs)
    processor = AutoImageProcessor.from_pretrained(args.model, **kwargs)
    dataset = load_mnist(args.dataset, args.split, args.max_samples)
    start = time.perf_counter()
    result = evaluate_model(model, processor, dataset, args.batch_size, progress=not args.no_progress)
    result = {
        **result,
        "model": str(args.model),
        "revision": args.revision,
        "dataset": str(args.dataset),
        "split": args.split,
        "wall_s": round(time.perf_counter() - start, 2),
        "git": git_commit(),
        "versions": versions(),
    }
    print(format_table(result))
    if args.output:
        write_json(Path(args.output), result)
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
