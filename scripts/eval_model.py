"""Evaluate a Mini-Vision-V2 model on an MNIST split: accuracy (via the `evaluate` library, offline), loss,
per-class accuracy and the confusion matrix, all through the model's own image processor.

    python -m scripts.eval_model --model . --dataset ../shared/data/mnist --split test --output records/eval_test.json
    python -m scripts.eval_model --model someone/mini-vision-v2 --revision <sha> --trust-remote-code ...

The JSON has top-level `accuracy` and `loss`; a readable table is printed. Calibration is reported next to them:
`ece` (expected calibration error, 15 equal-width confidence bins) of the softmax scores, and when the config stores
a `calibration_temperature` T (fitted on validation rows by scripts/make_variant.py), `ece_temperature` and
`loss_temperature` of softmax(logits / T) too. `--tta` adds test-time augmentation figures (`tta_accuracy`, the
softmax averaged over the image and its 1-pixel shifts), reported separately and never in `accuracy`.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`
import scripts  # noqa: E402,F401  # isort: skip  (first, as under -m: its excepthook, Ctrl-C handling)

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf  # noqa: F401  (registers the Auto classes, so local folders need no remote code)
from minivision_hf.data import DEFAULT_DATASET, load_mnist
from minivision_hf.metrics import load_accuracy
from minivision_hf.training import (
    dataset_source,
    git_commit,
    model_source,
    output_file,
    positive,
    revision_problem,
    unwritable_caches,
    versions,
    write_json,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_source, default=".",
                   help='folder or Hub id (default: ".", the release when run from the repo root)')  # fmt: skip
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha) to pin")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="needed for Hub ids unless the package is installed"
    )
    p.add_argument("--dataset", type=dataset_source, default=DEFAULT_DATASET, help="Hub id or local folder / parquet")
    p.add_argument("--split", default="test")
    p.add_argument("--max-samples", type=positive(int), default=None, help="evaluate the first N images (default: all)")
    p.add_argument("--batch-size", type=positive(int), default=1000, help="images per forward pass")
    p.add_argument("--output", type=output_file, default=None, help="JSON file to write")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation (shifted copies, averaged)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    # datasets and evaluate write to their caches even for a local folder
    problems = [*filter(None, [revision_problem(args.model, args.revision)]), *unwritable_caches()]
    if problems:
        p.error("; ".join(problems))
    return args


ECE_BINS = 15  # the usual choice (Guo et al. 2017, "On calibration of modern neural networks")
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (dy, dx) pixels: the image and its four 1-pixel shifts


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by the bin's share."""
    confidence, preds = probs.max(-1)
    correct = (preds == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(correct[in_bin].mean().item() - confidence[in_bin].mean().item())
    return ece


def shifted(pixel_values: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Shift normalised images by (dy, dx) pixels, filling the uncovered border with the background value."""
    if dy == 0 and dx == 0:
        return pixel_values
    h, w = pixel_values.shape[-2:]
    padded = torch.nn.functional.pad(pixel_values, (1, 1, 1, 1), value=fill)
    return padded[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


@torch.inference_mode()
def collect_logits(model, processor, dataset, batch_size: int = 1000, progress: bool = True, tta: bool = False):
    """(logits, labels, tta_probs): fp32 logits of every image through the image processor; with `tta`, the softmax
    averaged over TTA_SHIFTS (else None)."""
    model.eval()
    fill = (0.0 - float(processor.image_mean)) / float(processor.image_std)  # a black pixel, normalised
    logits_all, labels_all, tta_all = [], [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate", disable=not progress):
        batch = dataset[start : start + batch_size]
        pixel_values = processor(batch["image"], return_tensors="pt")["pixel_values"].to(model.dtype)
        logits_all.append(model(pixel_values=pixel_values).logits.float())
        labels_all.append(torch.as_tensor(batch["label"]))
        if tta:
            probs = [model(pixel_values=shifted(pixel_values, dy, dx, fill)).logits.float().softmax(-1)
                     for dy, dx in TTA_SHIFTS]  # fmt: skip
            tta_all.append(torch.stack(probs).mean(0))
    return torch.cat(logits_all), torch.cat(labels_all), torch.cat(tta_all) if tta else None


def evaluate_model(model, processor, dataset, batch_size: int = 1000, progress: bool = True, tta: bool = False) -> dict:
    """Accuracy, loss, ECE, per-class accuracy and confusion matrix of `model` on a datasets split of MNIST (and
    temperature-scaled calibration when the config has `temperature`; TTA figures, separately, with `tta`)."""
    logits, labels_t, tta_probs = collect_logits(model, processor, dataset, batch_size, progress, tta)
    loss_sum = torch.nn.functional.cross_entropy(logits, labels_t, reduction="sum").item()
    labels, preds = labels_t.numpy(), logits.argmax(-1).numpy()
    num_labels = model.config.num_labels
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    per_class = {
        model.config.id2label[i]: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
        for i in range(num_labels)
    }
    accuracy = load_accuracy().compute(predictions=preds.tolist(), references=labels.tolist())["accuracy"]
    calibration = {"ece": expected_calibration_error(logits.softmax(-1), labels_t), "ece_bins": ECE_BINS}
    temperature = getattr(model.config, "calibration_temperature", None)
    if temperature:
        scaled = logits / temperature
        calibration.update(
            temperature=temperature,
            ece_temperature=expected_calibration_error(scaled.softmax(-1), labels_t),
            loss_temperature=torch.nn.functional.cross_entropy(scaled, labels_t).item(),
        )
    if tta_probs is not None:
        tta_preds = tta_probs.argmax(-1)
        calibration.update(
            tta_accuracy=1 - int((tta_preds != labels_t).sum()) / len(labels_t),  # exact, as `accuracy`
            tta_errors=int((tta_preds != labels_t).sum()),
            tta_shifts=[list(s) for s in TTA_SHIFTS],
        )
    return {
        "accuracy": accuracy,
        "loss": loss_sum / len(labels),
        **calibration,
        "num_samples": int(len(labels)),
        "errors": int((preds != labels).sum()),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": [model.config.id2label[i] for i in range(num_labels)],
    }


def format_table(result: dict) -> str:
    lines = [
        f"accuracy {result['accuracy']:.4%}   loss {result['loss']:.4f}   "
        f"errors {result['errors']} / {result['num_samples']}   ECE ({result['ece_bins']} bins) {result['ece']:.4f}"
        + (f"   with T={result['temperature']:.3f}: ECE {result['ece_temperature']:.4f}" if "temperature" in result
           else "")
        + (f"\nTTA ({len(result['tta_shifts'])} shifted copies, separate from the accuracy above): "
           f"{result['tta_accuracy']:.4%}" if "tta_accuracy" in result else ""),
        "",
        "true\\pred " + " ".join(f"{label:>5}" for label in result["labels"]) + "   class acc",
    ]
    for label, row in zip(result["labels"], result["confusion_matrix"]):
        acc = result["per_class_accuracy"][label]  # None: no image of this class was evaluated
        lines.append(f"{label:>9} " + " ".join(f"{v:>5}" for v in row) + "   " + ("-" if acc is None else f"{acc:.4f}"))
    return "\n".join(lines)


def load_processor(source: str, **kwargs):
    """The model's image processor; a folder saved without one (`model.save_pretrained` alone) gets the default
    MiniVisionImageProcessor, the MNIST protocol every model here is trained with, and a note says so."""
    if Path(source).expanduser().is_dir() and not Path(source, "preprocessor_config.json").expanduser().is_file():
        print(f"eval_model.py: no preprocessor_config.json in {source}: evaluating with the default "
              "MiniVisionImageProcessor", file=sys.stderr)  # fmt: skip
        return minivision_hf.MiniVisionImageProcessor()
    return AutoImageProcessor.from_pretrained(source, **kwargs)


def main(argv=None) -> dict:
    args = parse_args(argv)
    kwargs = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
    try:
        model = AutoModelForImageClassification.from_pretrained(args.model, **kwargs)
        processor = load_processor(args.model, **kwargs)
    except OSError as err:  # a Hub id that cannot be reached (offline), no such repo or revision
        scripts.usage_error("eval_model.py", f"--model {args.model}: {err}")
    try:
        dataset = load_mnist(args.dataset, args.split, args.max_samples)
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # missing, offline, not MNIST, no such split
        scripts.usage_error("eval_model.py", str(err))
    start = time.perf_counter()
    result = evaluate_model(model, processor, dataset, args.batch_size, progress=not args.no_progress, tta=args.tta)
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
