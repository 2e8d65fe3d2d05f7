"""Export Mini-Vision-V2 to ONNX (fp32) and an int8 ONNX Runtime model, each checked against PyTorch.

    python -m scripts.export_onnx                                   # the release at the repo root -> onnx/
    python -m scripts.export_onnx --model outputs/seed --calibration-dataset ../shared/data/mnist
    python -m scripts.export_onnx --model . --output /tmp/onnx --calibration-dataset tests/fixtures/mnist_tiny  # CI

Writes to --output:
- `model.onnx`: input `pixel_values` (batch, 1, 28, 28) float32, normalised as the image processor does, output
  `logits` (batch, 10); dynamic batch axis. Exported with the torch.export-based exporter (`dynamo=True`, opset 20):
  a clean Conv/Relu/MaxPool/BatchNormalization/Gemm graph (the TorchScript exporter, `dynamo=False`, also works but
  leaves Identity nodes and traces the model's input-shape check as a constant). The graph is the model with two
  exact rewrites (ReLU before MaxPool, last BatchNorm folded into the first Linear; see
  `minivision_hf.onnx_utils.OnnxExportGraph`), and the check below compares it with the model itself.
- `model_int8.onnx`: ONNX Runtime int8 quantisation, per-channel int8 weights. Candidates: static QDQ with uint8 or
  int8 activations (calibrated, min/max, on --calibration-samples training images after ORT's `quant_pre_process`),
  and dynamic quantisation. Kept: the fastest at batch 1024 among those within --max-accuracy-drop of fp32's test
  accuracy (all numbers, and the reason, in the report). Images/s at batch 1024 on 1 thread, measured on this 2-core
  AVX-512 VM (cpuinfo: AMD EPYC, avx512_vnni + avx512_bf16, no AMX) with a training job beside it: eager PyTorch
  fp32 ~2,000-2,500; ORT fp32 ~10,000; static QDQ ~15,000-17,500 for both uint8 and int8 activations (QLinearConv
  with the ReLU fused, NHWC int8 MaxPool, QGemm); dynamic ~2,200 (ConvInteger and run-time activation quantisation
  are slow on CPU). So static QDQ; uint8 vs int8 activations is within the noise, and the measurement decides.
- `export_report.json`: checks, accuracies, speeds, sizes, opset, versions.
Both files carry id2label, label2id and the preprocessing constants in their ONNX metadata_props.

Checks (the script raises, after writing the report, when one fails): fp32 max |logit - PyTorch logit| < 1e-4 at
batch 1, batch 7 (dynamic batch) and over the evaluation images; int8 top-1 agreement with PyTorch >= 99% over the
evaluation images (the test split, --eval-samples). An untrained model's near-equal logits flip more easily under
int8: lower --min-agreement for such smoke exports.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

import numpy as np
import onnxruntime
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import minivision_hf as mv
import onnx
from minivision_hf import onnx_utils
from minivision_hf.data import DEFAULT_DATASET, decode_to_uint8, load_mnist
from minivision_hf.training import git_commit, hardware, versions, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".", help="model folder or Hub id (default: the release at the repo root)")
    p.add_argument("--output", default="onnx", help="folder for model.onnx, model_int8.onnx, export_report.json")
    p.add_argument("--opset", type=int, default=onnx_utils.DEFAULT_OPSET, help="ONNX opset (>= 18 for this exporter)")
    p.add_argument("--calibration-dataset", default=DEFAULT_DATASET,
                   help="Hub id or local folder; its train split calibrates, its test split evaluates")  # fmt: skip
    p.add_argument("--calibration-samples", type=int, default=512, help="training images for static calibration")
    p.add_argument("--eval-samples", type=int, default=None, help="test images for the checks (default: all)")
    p.add_argument("--methods", nargs="+", choices=onnx_utils.QUANT_METHODS, default=list(onnx_utils.QUANT_METHODS),
                   help="int8 candidates to compare")  # fmt: skip
    p.add_argument("--max-accuracy-drop", type=float, default=0.001,
                   help="int8 candidates qualify within this much of fp32's accuracy (0.001 = 0.1 points)")  # fmt: skip
    p.add_argument("--time-s", type=float, default=2.0, help="seconds timed per candidate at batch 1024")
    p.add_argument("--max-logit-diff", type=float, default=1e-4, help="fp32 check: max |ONNX - PyTorch| logit")
    p.add_argument("--min-agreement", type=float, default=0.99, help="int8 check: top-1 agreement with PyTorch")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = output / "model.onnx", output / "model_int8.onnx"
    threads = onnx_utils.cpu_cores()

    # ---- model and data ----
    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    if not isinstance(model, mv.MiniVisionForImageClassification):
        raise TypeError(f"{args.model} holds a {type(model).__name__}, not a MiniVisionForImageClassification")
    processor = AutoImageProcessor.from_pretrained(args.model)
    calibration_x, _ = decode_to_uint8(load_mnist(args.calibration_dataset, "train", args.calibration_samples))
    eval_x, eval_y = decode_to_uint8(load_mnist(args.calibration_dataset, "test", args.eval_samples))
    # The image processor's tensor path: uint8 -> /255 -> (x - mean) / std, as in training and evaluation.
    mean, std = float(np.ravel(processor.image_mean)[0]), float(np.ravel(processor.image_std)[0])
    calibration = mv.to_pixel_values(calibration_x, mean, std).numpy()
    pixels = mv.to_pixel_values(eval_x, mean, std)
    labels = eval_y.numpy()
    with torch.no_grad():
        reference = torch.cat([model(pixel_values=pixels[i : i + 1024]).logits for i in range(0, len(pixels), 1024)])
    reference = reference.numpy()
    batch_1024 = np.resize(pixels.numpy(), (1024, *pixels.shape[1:]))  # repeats the test images if fewer than 1024

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(1) == labels).mean())

    def speed_b1024(session) -> dict:
        inputs = {onnx_utils.INPUT_NAME: batch_1024}
        return onnx_utils.throughput(lambda: session.run(None, inputs), 1024, args.time_s, min(0.5, args.time_s))

    # ---- fp32 export and parity check ----
    onnx_utils.export_onnx(model, fp32_path, args.opset)
    fp32_session = onnx_utils.ort_session(fp32_path, threads)
    fp32_logits = onnx_utils.ort_logits(fp32_session, pixels)
    diffs = {
        "batch_1": float(np.abs(onnx_utils.ort_logits(fp32_session, pixels[:1]) - reference[:1]).max()),
        "batch_7": float(np.abs(onnx_utils.ort_logits(fp32_session, pixels[:7]) - reference[:7]).max()),
        f"eval_{len(pixels)}": float(np.abs(fp32_logits - reference).max()),
    }
    fp32 = {
        "max_abs_logit_diff": diffs,
        "accuracy": accuracy(fp32_logits),
        "pytorch_accuracy": accuracy(reference),
        "speed_b1024": speed_b1024(fp32_session),
    }
    print(f"fp32: max |logit diff| {max(diffs.values()):.2e}, accuracy {fp32['accuracy']:.4f}, "
          f"{fp32['speed_b1024']['images_per_s']:,.0f} images/s at batch 1024")  # fmt: skip

    # ---- int8 candidates ----
    candidates = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = onnx_utils.preprocess_for_quantization(fp32_path, Path(tmp) / "model_prepared.onnx")
        for method in args.methods:
            path = onnx_utils.quantize_int8(prepared, Path(tmp) / f"{method}.onnx", method, calibration)
            session = onnx_utils.ort_session(path, threads)
            logits = onnx_utils.ort_logits(session, pixels)
            result = candidates[method] = {
                "accuracy": accuracy(logits),
                "qualifies": accuracy(logits) >= fp32["accuracy"] - args.max_accuracy_drop,
                "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "max_abs_logit_diff": float(np.abs(logits - reference).max()),
                "speed_b1024": speed_b1024(session),
                "bytes": path.stat().st_size,
            }
            print(f"int8 {method}: accuracy {result['accuracy']:.4f}, agreement {result['top1_agreement']:.4f}, "
                  f"{result['speed_b1024']['images_per_s']:,.0f} images/s at batch 1024")  # fmt: skip
        # The fastest candidate within the accuracy tolerance; if none is, the most accurate (and the report says so).
        qualified = [m for m in candidates if candidates[m]["qualifies"]]
        if qualified:
            chosen = max(qualified, key=lambda m: candidates[m]["speed_b1024"]["images_per_s"])
            why = (f"fastest at batch 1024 among candidates at most {args.max_accuracy_drop * 100:g} points below "
                   f"fp32's test accuracy ({', '.join(qualified)})")  # fmt: skip
        else:
            chosen = max(candidates, key=lambda m: candidates[m]["accuracy"])
            why = f"none within {args.max_accuracy_drop * 100:g} points of fp32's accuracy; kept the most accurate"
        shutil.copyfile(Path(tmp) / f"{chosen}.onnx", int8_path)

    # ---- labels and provenance in the ONNX metadata ----
    metadata = {
        "model_type": model.config.model_type,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "label2id": dict(model.config.label2id),
        "preprocessing": "MiniVisionImageProcessor (MNIST protocol), then pixel_values = (pixel / 255 - mean) / std",
        "image_mean": mean,
        "image_std": std,
        "source_model": str(args.model),
        "weights_sha256": onnx_utils.weights_digest(model),
    }
    onnx_utils.set_metadata(fp32_path, {**metadata, "quantization": "none"})
    onnx_utils.set_metadata(int8_path, {**metadata, "quantization": chosen})

    # ---- report, then the checks ----
    int8 = {"method": chosen, "why": why, **candidates[chosen], "candidates": candidates}
    checks = {
        "fp32_max_abs_logit_diff": {"value": max(diffs.values()), "limit": args.max_logit_diff},
        "int8_top1_agreement": {"value": int8["top1_agreement"], "limit": args.min_agreement},
    }
    checks["fp32_max_abs_logit_diff"]["passed"] = max(diffs.values()) < args.max_logit_diff
    checks["int8_top1_agreement"]["passed"] = int8["top1_agreement"] >= args.min_agreement
    report = {
        "script": "scripts/export_onnx.py",
        "args": vars(args),
        "model": str(args.model),
        "weights_sha256": metadata["weights_sha256"],
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": args.opset,
        "input": {"name": onnx_utils.INPUT_NAME, "shape": ["batch", 1, 28, 28], "dtype": "float32"},
        "output": {"name": onnx_utils.OUTPUT_NAME, "shape": ["batch", model.config.num_labels], "dtype": "float32"},
        "files": {p.name: {"bytes": p.stat().st_size} for p in (fp32_path, int8_path)},
        "calibration": {"dataset": str(args.calibration_dataset), "split": "train", "samples": len(calibration)},
        "eval": {"dataset": str(args.calibration_dataset), "split": "test", "samples": len(pixels)},
        "ort_threads": threads,
        "fp32": fp32,
        "int8": int8,
        "checks": checks,
        "passed": all(c["passed"] for c in checks.values()),
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "git": git_commit(),
        "hardware": hardware(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(output / "export_report.json", report)
    failed = [f"{name} = {c['value']:.6g} (limit {c['limit']})" for name, c in checks.items() if not c["passed"]]
    if failed:
        raise RuntimeError(f"ONNX export check failed: {'; '.join(failed)} (see {output / 'export_report.json'})")
    print(f"kept int8 {chosen} ({why}); wrote {fp32_path}, {int8_path}, {output / 'export_report.json'}")
    return report


if __name__ == "__main__":
    main()
