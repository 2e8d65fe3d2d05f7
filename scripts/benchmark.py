"""Benchmark Mini-Vision-V2 on this machine: training and inference speed side by side, in one run, one machine.

    python -m scripts.benchmark                      # full, ~4 minutes -> records/benchmark.json, records/benchmark.md
    python -m scripts.benchmark --quick --output /tmp/bench.json --markdown /tmp/bench.md     # ~1 minute, CI smoke

Every number is wall-clock on this machine: run it on a quiet one (no training job beside it).

(a) Training images/s in steady state through the real Trainer script (`python -m scripts.train`, each run in its
    own process; the median optimizer step after 5 warm-up steps): the plain path (per-sample PIL transforms, fp32,
    NCHW) against the fast path (batched tensor augmentation, bf16 autocast, channels_last, fused conv/max-pool/ReLU
    C kernels: train.py's defaults). The two alternate for --train-rounds rounds, so that a busy spell on a shared
    machine hits both; each path's figure is its median over rounds. `train_speedup` = fast / plain.
(b) Inference images/s at batch 1 and 1024: eager fp32 (the model as loaded, NCHW, no_grad), eager bf16 autocast +
    channels_last + inference_mode, ONNX Runtime fp32 and int8 (intra-op threads = cores). Warm-up, then timed calls
    for --time-s seconds. `inference_speedup` = the best batch-1024 images/s among variants whose test accuracy is at
    most 0.1 points below eager fp32's, over eager fp32's batch-1024 images/s.
(c) `pipeline("image-classification")` latency per single image, p50/p95: MNIST's own 28x28 digits (PIL) and a
    400x400 RGBA drawing (black strokes on a transparent layer, as the Space's sketchpad sends) handed over as an
    array: the pipeline's `load_image` converts PIL images to RGB, which drops the alpha and turns such a drawing
    into a blank black canvas (the record keeps both predictions to show it).
(d) Each inference variant's accuracy on the same preprocessed test tensor (decode_to_uint8 + to_pixel_values).
(e) FLOPs per image from the layer shapes (training ~ 3x forward) against a measured matmul peak (the best of
    n x n matmuls for n in --peak-sizes; fp32, bf16 (AVX512-BF16 / AMX where the CPU has them), int8): achieved
    GFLOP/s and the fraction of peak for both training paths and every inference variant at batch 1024.

Targets (reported, not asserted): train_speedup >= 5; inference_speedup >= 4.
ONNX files come from --onnx-dir when they were exported from these weights (their metadata's weights_sha256), else
the script exports them into a temporary folder with scripts/export_onnx.py.
"""

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/x.py` imports as `-m scripts.x`

import numpy as np
import onnxruntime
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageClassification, pipeline

import minivision_hf as mv
import onnx
from minivision_hf import fast, onnx_utils
from minivision_hf.data import decode_to_uint8, load_mnist
from minivision_hf.training import git_commit, hardware, versions, write_json
from scripts import export_onnx

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_DATASET = REPO_ROOT / "tests" / "fixtures" / "mnist_tiny"
TARGETS = {"train_speedup": 5.0, "inference_speedup": 4.0}
MAX_ACCURACY_DROP = 0.001  # 0.1 percentage points of test accuracy
# Which matmul peak each variant's arithmetic runs at.
VARIANT_DTYPE = {"eager_fp32": "fp32", "eager_bf16_channels_last": "bf16", "ort_fp32": "fp32", "ort_int8": "int8"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: fewer steps, images, calls, seconds")
    p.add_argument("--output", default="records/benchmark.json", help="JSON record (it holds the markdown too)")
    p.add_argument("--markdown", default="records/benchmark.md", help="markdown table")
    p.add_argument("--model", default=".", help="model folder or Hub id (default: the release at the repo root)")
    p.add_argument("--dataset", default="../shared/data/mnist",
                   help="MNIST folder or Hub id; --quick uses tests/fixtures/mnist_tiny if absent")  # fmt: skip
    p.add_argument("--onnx-dir", default="onnx", help="exported model.onnx / model_int8.onnx to reuse if they match")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps per training path (60; quick 15)")
    p.add_argument("--train-rounds", type=int, default=None,
                   help="plain/fast runs alternated this many times, medians compared (5; quick 1)")  # fmt: skip
    p.add_argument("--train-batch-size", type=int, default=256, help="training batch (the seed recipe's 256)")
    p.add_argument("--eval-samples", type=int, default=None, help="test images for accuracy (10000; quick 1000)")
    p.add_argument("--time-s", type=float, default=None, help="timed seconds per inference measurement (2; quick 0.25)")
    p.add_argument("--pipeline-calls", type=int, default=None, help="pipeline calls per input kind (50; quick 10)")
    p.add_argument("--peak-sizes", type=int, nargs="+", default=None,
                   help="n of the n x n peak matmuls, best kept (1024 2048 4096; quick 1024 2048)")  # fmt: skip
    p.add_argument("--int8-min-agreement", type=float, default=0.99,
                   help="export check when this script exports (lower it for untrained models)")  # fmt: skip
    args = p.parse_args(argv)
    quick = args.quick
    args.train_steps = args.train_steps or (15 if quick else 60)
    args.train_rounds = args.train_rounds or (1 if quick else 5)
    args.eval_samples = args.eval_samples or (1000 if quick else 10000)
    args.time_s = args.time_s or (0.25 if quick else 2.0)
    args.pipeline_calls = args.pipeline_calls or (10 if quick else 50)
    args.peak_sizes = args.peak_sizes or ([1024, 2048] if quick else [1024, 2048, 4096])
    return args


# ---- (e) FLOPs and peak -----------------------------------------------------------------------------------------


def forward_flops(config: mv.MiniVisionConfig) -> dict[str, int]:
    """FLOPs (2 x multiply-adds) of each conv and linear layer for one image. ReLU, max-pooling and BatchNorm are
    left out: about 1% on top (a few elementwise operations per activation)."""
    flops, size, channels = {}, config.image_size, config.num_channels
    for i, out_channels in enumerate(config.conv_channels, start=1):
        size = (size + 2 * config.padding - config.kernel_size) // config.stride + 1
        flops[f"conv{i}"] = 2 * channels * out_channels * config.kernel_size**2 * size * size
        size, channels = size // config.pool_size, out_channels
    flops["linear1"] = 2 * config.flat_features * config.hidden_size
    flops["linear2"] = 2 * config.hidden_size * config.num_labels
    return flops


def matmul_peak_gflops(dtype: str, n: int, time_s: float) -> float | None:
    """Measured n x n x n matmul rate in GFLOP/s: fp32, bf16 tensors (oneDNN picks AVX512-BF16 or AMX where present),
    int8 x int8 -> int32 (`torch._int_mm`; None where this build has no CPU kernel for it)."""
    if dtype == "int8":
        a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8) for _ in range(2))
        matmul = torch._int_mm
    else:
        a, b = (torch.randn(n, n, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16) for _ in range(2))
        matmul = torch.matmul
    try:
        speed = onnx_utils.throughput(lambda: matmul(a, b), 1, time_s, warmup_s=min(0.5, time_s))
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    return round(2 * n**3 * speed["images_per_s"] / 1e9, 1)  # "images" = matmuls here


def conv2_step_ms(config: mv.MiniVisionConfig, batch: int, time_s: float) -> dict:
    """The second convolution alone, forward and its two backward passes (input and weight gradients) at the training
    batch, both ways: PyTorch's (oneDNN's bf16 kernel, channels_last) and the fast path's (Winograd F(2x2, 3x3) with
    the block's max-pool + ReLU fused in, minivision_hf/fast; None where the fast path does not run it). About 78% of
    the training FLOPs sit in this convolution, so it bounds how short a training step can get on this CPU."""
    c_in, c_out = config.conv_channels[0], config.conv_channels[1]
    size = config.image_size // config.pool_size
    fmt = torch.channels_last
    x = torch.randn(batch, c_in, size, size, dtype=torch.bfloat16).contiguous(memory_format=fmt).requires_grad_(True)
    conv = torch.nn.Conv2d(c_in, c_out, config.kernel_size, config.stride, config.padding).to(memory_format=fmt)
    grad = torch.randn(batch, c_out, size, size, dtype=torch.bfloat16).contiguous(memory_format=fmt)
    pooled_grad = grad[:, :, ::2, ::2].contiguous(memory_format=fmt)

    def onednn():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        torch.autograd.grad(out, [x, conv.weight, conv.bias], grad)

    def winograd():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast.WinogradConvPoolReLU.apply(x, conv.weight, conv.bias, plan.build.library, one_pass)
        torch.autograd.grad(out, [x, conv.weight, conv.bias], pooled_grad)

    warmup = min(0.5, time_s)
    speed = onnx_utils.throughput(onednn, batch, time_s, warmup_s=warmup)
    result = {"batch": batch, "ms": speed["ms_per_call_p50"], "calls": speed["calls"], "winograd_ms": None}
    plan = fast.plan_fast_path(bf16=True)  # the path the fast path would choose for this conv on this CPU
    path = fast.choose_block_path(conv, plan)
    one_pass = path is fast.KernelPath.C_ONE_PASS
    if path in (fast.KernelPath.C_ONE_PASS, fast.KernelPath.C_BMM):
        result["winograd_ms"] = onnx_utils.throughput(winograd, batch, time_s, warmup_s=warmup)["ms_per_call_p50"]
    return result


def utilisation(images_per_s: float, flops_per_image: float, peak_gflops: float | None) -> dict:
    achieved = images_per_s * flops_per_image / 1e9
    return {
        "achieved_gflops": round(achieved, 2),
        "peak_gflops": peak_gflops,
        "fraction_of_peak": round(achieved / peak_gflops, 4) if peak_gflops else None,
    }


def train_run(path: str, dataset: str, args: argparse.Namespace, max_train: int | None) -> dict:
    """One short `scripts.train` run of a data path in its own process (the fast path changes process-wide state:
    glibc's malloc settings, thread pools, which must not leak into the other path or the inference measurements);
    returns its run record (steady_images_per_s = median optimizer step after 5 warm-up steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([
            sys.executable, "-m", "scripts.train",
            "--dataset", dataset, "--data-path", path, "--max-steps", str(args.train_steps), "--epochs", "1",
            "--batch-size", str(args.train_batch_size), "--no-progress", "--max-eval-samples", "256",
            "--output-dir", tmp, "--save-total-limit", "1",
            *(["--max-train-samples", str(max_train)] if max_train else []),
        ], cwd=REPO_ROOT, check=True, capture_output=True, text=True)  # fmt: skip
        return json.loads((Path(tmp) / "run_record.json").read_text())


def onnx_matches(onnx_dir: Path, digest: str) -> bool:
    """Whether `onnx_dir` holds model.onnx and model_int8.onnx exported from the weights with this digest."""
    files = [Path(onnx_dir) / "model.onnx", Path(onnx_dir) / "model_int8.onnx"]
    return all(f.exists() and onnx_utils.get_metadata(f).get("weights_sha256") == digest for f in files)


# ---- (c) pipeline -----------------------------------------------------------------------------------------------


def drawing_like_image(size: int = 400) -> Image.Image:
    """A black "7" stroked on a transparent RGBA layer, the way the Space's sketchpad hands a drawing over."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    s = size / 400
    points = [(110 * s, 90 * s), (290 * s, 90 * s), (170 * s, 320 * s)]
    ImageDraw.Draw(image).line(points, fill=(0, 0, 0, 255), width=round(28 * s), joint="curve")
    return image


def latency_ms(classify, images: list, calls: int, warmup: int = 3) -> dict:
    """Per-call latency of `classify(image)` over `calls` calls cycling through `images`, after `warmup` calls."""
    for i in range(warmup):
        classify(images[i % len(images)])
    times = []
    for i in range(calls):
        start = time.perf_counter()
        classify(images[i % len(images)])
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "calls": calls,
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


# ---- report -----------------------------------------------------------------------------------------------------


def format_markdown(r: dict) -> str:
    hw, tr, inf, s = r["hardware"], r["training"], r["inference"], r["summary"]
    lines = [
        f"## Mini-Vision-V2 benchmark{' (quick)' if r['quick'] else ''}",
        "",
        f"{hw['cpu']}, {hw['cores']} cores, torch {r['versions']['torch']} ({hw['torch_threads']} threads), "
        f"onnxruntime {r['versions']['onnxruntime']}; commit {str(r['git']['commit'])[:10]}"
        f"{' (dirty)' if r['git']['dirty'] else ''}; {r['time_utc']}",
        "",
        f"### Training (Trainer, batch {tr['batch_size']}, {tr['steps']} steps, median step after warm-up; "
        f"median of {tr['rounds']} alternating rounds)",
        "",
        "| path | configuration | images/s | GFLOP/s | % of matmul peak |",
        "|---|---|---:|---:|---:|",
    ]
    for name in ("plain", "fast"):
        run = tr[name]
        util = run["utilisation"]
        lines.append(
            f"| {name} | {run['configuration']} | {run['steady_images_per_s']:,.0f} | {util['achieved_gflops']:.1f} | "
            f"{_percent(util['fraction_of_peak'])} ({util['peak_dtype']}) |"
        )
    lines += [
        "",
        f"**train_speedup = {s['train_speedup']:.2f}x** (target >= {TARGETS['train_speedup']:g}); per round: "
        + ", ".join(f"{x:.2f}x" for x in tr["round_speedups"])
        + ".",
        "",
        f"A fast step takes {tr['conv2_floor']['fast_step_ms']:.1f} ms; {TARGETS['train_speedup']:g}x the plain path "
        f"allows {tr['conv2_floor']['step_ms_for_target']:.1f} ms. The second convolution alone (forward + input and "
        f"weight gradients, batch {tr['conv2_floor']['batch']}) takes {tr['conv2_floor']['ms']:.1f} ms in oneDNN's "
        "bf16 kernel"
        + (
            f", {tr['conv2_floor']['winograd_ms']:.1f} ms as the fast path runs it (Winograd F(2x2,3x3) with the "
            "block's max-pool + ReLU fused in)."
            if tr["conv2_floor"].get("winograd_ms")
            else "."
        ),
        "",
        f"### Inference ({inf['accuracy_samples']} test images for accuracy)",
        "",
        "| variant | batch 1 images/s | batch 1024 images/s | vs eager fp32 @1024 | accuracy | GFLOP/s @1024 "
        "| % of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in inf["variants"].items():
        util = v["utilisation_b1024"]
        lines.append(
            f"| {name} | {v['batch_1']['images_per_s']:,.0f} | {v['batch_1024']['images_per_s']:,.0f} | "
            f"{v['speedup_b1024']:.2f}x | {v['accuracy']:.4f} | {util['achieved_gflops']:.1f} | "
            f"{_percent(util['fraction_of_peak'])} ({util['peak_dtype']}) |"
        )
    lines += [
        "",
        f"**inference_speedup = {s['inference_speedup']:.2f}x** ({s['inference_winner']}, accuracy at most "
        f"{MAX_ACCURACY_DROP * 100:g} points below eager fp32; target >= {TARGETS['inference_speedup']:g}). "
        f"ONNX int8: {inf['onnx']['int8_method']}.",
        "",
        '### pipeline("image-classification"), one image per call',
        "",
        "| input | calls | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, p in r["pipeline"].items():
        if isinstance(p, dict) and "p50_ms" in p:
            lines.append(f"| {name} | {p['calls']} | {p['p50_ms']:.2f} | {p['p95_ms']:.2f} |")
    lines += [
        "",
        f"The drawing (a 7) is classified as {r['pipeline']['drawing_prediction']!r} when passed as an RGBA array, "
        f"{r['pipeline']['drawing_prediction_as_pil_image']!r} as a PIL image (the pipeline converts PIL input to "
        "RGB, dropping the transparent layer's alpha).",
    ]
    peak, flops = r["peak"], r["flops"]
    lines += [
        "",
        f"### Arithmetic: {flops['forward_per_image'] / 1e6:.2f} MFLOP per image forward, "
        f"~{flops['train_per_image'] / 1e6:.1f} training; matmul peak = best of n x n matmuls, n in {peak['sizes']}",
        "",
        "| dtype | GFLOP/s |",
        "|---|---:|",
        *(f"| {k} | {v:,.0f} |" if v else f"| {k} | n/a |" for k, v in peak["gflops"].items()),
        "",
        "The peaks are PyTorch's own matmuls, timed in this run: a percentage says how close a variant gets to what "
        "PyTorch reaches on a large matmul; ONNX Runtime's kernels can run above it.",
        "",
    ]
    return "\n".join(lines)


def _percent(fraction: float | None) -> str:
    return f"{fraction:.1%}" if fraction is not None else "n/a"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    dataset = args.dataset
    if args.quick and not Path(dataset).exists():
        print(f"--quick: {dataset} not found, using {TINY_DATASET}")
        dataset = str(TINY_DATASET)
    cores = onnx_utils.cpu_cores()

    # ---- model and test data ----
    model = AutoModelForImageClassification.from_pretrained(args.model).eval()
    test_ds = load_mnist(dataset, "test", args.eval_samples)
    test_x, test_y = decode_to_uint8(test_ds)
    pixels = mv.to_pixel_values(test_x)  # the processor's tensor path for MNIST's own 28x28 digits
    labels = test_y.numpy()
    inputs = {1: pixels[:1].clone(), 1024: pixels[torch.arange(1024) % len(pixels)].contiguous()}
    flops = forward_flops(model.config)
    forward_per_image = sum(flops.values())

    # ---- (e) matmul peak ----
    peak_by_size = {
        dtype: {n: matmul_peak_gflops(dtype, n, min(args.time_s, 1.0)) for n in args.peak_sizes}
        for dtype in ("fp32", "bf16", "int8")
    }
    peak = {dtype: max((v for v in rates.values() if v), default=None) for dtype, rates in peak_by_size.items()}
    print(f"matmul peak GFLOP/s: {peak}")

    # ---- (a) training, plain vs fast, through scripts/train.py, alternating over --train-rounds ----
    training = {"batch_size": args.train_batch_size, "steps": args.train_steps, "rounds": args.train_rounds,
                "dataset": dataset}  # fmt: skip
    # Steps past the end of an epoch would include its evaluation and checkpoint in the step gaps.
    max_train = None if not args.quick else args.train_steps * args.train_batch_size
    records = {"plain": [], "fast": []}
    for round_index in range(args.train_rounds):
        for path in ("plain", "fast"):
            record = train_run(path, dataset, args, max_train)
            records[path].append(record)
            print(f"training round {round_index + 1}/{args.train_rounds}, {path}: "
                  f"{record['steady_images_per_s']:,.0f} images/s")  # fmt: skip
    for path, runs in records.items():
        record = runs[0]
        if record["dataset"]["train"] < args.train_steps * args.train_batch_size:
            print(f"note: {record['dataset']['train']} training rows < steps x batch: epoch-end evaluations fall "
                  "inside the timed steps")  # fmt: skip
        rates = [r["steady_images_per_s"] for r in runs]
        speed = statistics.median(rates)
        bf16, channels_last = bool(record["bf16"]), bool(record["args"]["channels_last"])
        fused = (record.get("fast_kernels") or {}).get("kernels_built")
        peak_dtype = "bf16" if bf16 else "fp32"
        augmentation = "batched tensor augmentation" if path == "fast" else "per-sample PIL transforms"
        training[path] = {
            "steady_images_per_s": speed,
            "rounds_images_per_s": rates,
            "bf16": bf16,
            "channels_last": channels_last,
            "fused_kernels": bool(fused),
            "configuration": f"{augmentation}, {'bf16 autocast' if bf16 else 'fp32'}, "
            f"{'channels_last' if channels_last else 'NCHW'}"
            f"{', fused conv/max-pool/ReLU kernels' if fused else ''}"
            f"{', freed memory kept in the heap' if record.get('malloc_keeps_freed_memory') else ''}",
            "train_rows": record["dataset"]["train"],
            "global_step": record["global_step"],
            "utilisation": {
                **utilisation(speed, 3 * forward_per_image, peak[peak_dtype]),
                "peak_dtype": peak_dtype,
            },
        }
    train_speedup = round(training["fast"]["steady_images_per_s"] / training["plain"]["steady_images_per_s"], 3)
    # What bounds the fast step here: the second convolution alone, against the step time a 5x speedup allows.
    floor = conv2_step_ms(model.config, args.train_batch_size, min(args.time_s, 1.0))
    floor["fast_step_ms"] = round(args.train_batch_size / training["fast"]["steady_images_per_s"] * 1e3, 2)
    floor["step_ms_for_target"] = round(
        args.train_batch_size / (TARGETS["train_speedup"] * training["plain"]["steady_images_per_s"]) * 1e3, 2
    )
    training["conv2_floor"] = floor
    training["round_speedups"] = [
        round(f["steady_images_per_s"] / p["steady_images_per_s"], 3) for p, f in zip(records["plain"], records["fast"])
    ]

    # ---- ONNX files: reuse --onnx-dir if exported from these weights, else export now ----
    digest = onnx_utils.weights_digest(model)
    onnx_dir = Path(args.onnx_dir)
    export_tmp = None
    if onnx_matches(onnx_dir, digest):
        onnx_source = str(onnx_dir)
    else:
        export_tmp = tempfile.TemporaryDirectory()
        onnx_dir = Path(export_tmp.name)
        print(f"exporting ONNX from {args.model} into a temporary folder")
        export_onnx.main([
            "--model", args.model, "--output", str(onnx_dir), "--calibration-dataset", dataset,
            "--eval-samples", str(args.eval_samples), "--time-s", str(min(args.time_s, 1.0)),
            "--min-agreement", str(args.int8_min_agreement),
        ])  # fmt: skip
        onnx_source = "exported by this run (temporary folder)"
    int8_method = onnx_utils.get_metadata(onnx_dir / "model_int8.onnx").get("quantization")

    # ---- (b, d) inference variants: speed at batch 1 and 1024, accuracy on the test tensor ----
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ort_fp32 = onnx_utils.ort_session(onnx_dir / "model.onnx", cores)
    ort_int8 = onnx_utils.ort_session(onnx_dir / "model_int8.onnx", cores)

    def eager_fp32(x: torch.Tensor) -> torch.Tensor:  # the model as loaded
        with torch.no_grad():
            return model(pixel_values=x).logits

    def eager_bf16_channels_last(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model_cl(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits.float()

    variants = {
        "eager_fp32": eager_fp32,
        "eager_bf16_channels_last": eager_bf16_channels_last,
        "ort_fp32": lambda x: ort_fp32.run(None, {onnx_utils.INPUT_NAME: x.numpy()})[0],
        "ort_int8": lambda x: ort_int8.run(None, {onnx_utils.INPUT_NAME: x.numpy()})[0],
    }
    results = {}
    for name, fn in variants.items():
        logits = np.concatenate([np.asarray(fn(pixels[i : i + 1024])) for i in range(0, len(pixels), 1024)])
        r = results[name] = {"accuracy": float((logits.argmax(1) == labels).mean())}
        for batch, x in inputs.items():
            call = functools.partial(fn, x)
            r[f"batch_{batch}"] = onnx_utils.throughput(call, batch, args.time_s, warmup_s=min(0.5, args.time_s))
        print(f"{name}: {r['batch_1']['images_per_s']:,.0f} / {r['batch_1024']['images_per_s']:,.0f} images/s "
              f"at batch 1 / 1024, accuracy {r['accuracy']:.4f}")  # fmt: skip
    baseline = results["eager_fp32"]
    for name, r in results.items():
        r["speedup_b1024"] = round(r["batch_1024"]["images_per_s"] / baseline["batch_1024"]["images_per_s"], 3)
        r["speedup_b1"] = round(r["batch_1"]["images_per_s"] / baseline["batch_1"]["images_per_s"], 3)
        r["accurate"] = r["accuracy"] >= baseline["accuracy"] - MAX_ACCURACY_DROP - 1e-9
        dtype = VARIANT_DTYPE[name] if peak.get(VARIANT_DTYPE[name]) else "bf16"  # no int8 peak: compare with bf16
        util = utilisation(r["batch_1024"]["images_per_s"], forward_per_image, peak[dtype])
        r["utilisation_b1024"] = {**util, "peak_dtype": dtype}
    accurate = [name for name in results if results[name]["accurate"]]  # eager fp32 always is
    winner = max(accurate, key=lambda name: results[name]["batch_1024"]["images_per_s"])
    inference_speedup = results[winner]["speedup_b1024"]
    if export_tmp is not None:
        export_tmp.cleanup()

    # ---- (c) pipeline latency, one image per call ----
    classify = pipeline("image-classification", model=args.model, trust_remote_code=False)
    digits = [test_ds[i]["image"] for i in range(min(len(test_ds), args.pipeline_calls))]
    drawing = np.array(drawing_like_image())  # (400, 400, 4) uint8: arrays reach the processor with their alpha
    pipeline_latency = {
        "mnist_28x28_L": latency_ms(classify, digits, args.pipeline_calls),
        "drawing_400x400_RGBA": latency_ms(classify, [drawing], args.pipeline_calls),
        "drawing_prediction": classify(drawing)[0]["label"],  # "7" from a trained model
        # The same drawing as a PIL image: load_image converts it to RGB (alpha dropped, black ink on black).
        "drawing_prediction_as_pil_image": classify(drawing_like_image())[0]["label"],
    }

    # ---- summary and record ----
    best = results[winner]
    result = {
        "script": "scripts/benchmark.py",
        "quick": args.quick,
        "args": vars(args),
        "model": str(args.model),
        "weights_sha256": digest,
        "summary": {
            "train_speedup": train_speedup,
            "train_fast_images_per_s": training["fast"]["steady_images_per_s"],
            "train_plain_images_per_s": training["plain"]["steady_images_per_s"],
            "inference_speedup": inference_speedup,
            "inference_winner": winner,
            "inference_winner_images_per_s_b1024": best["batch_1024"]["images_per_s"],
            "eager_fp32_images_per_s_b1024": baseline["batch_1024"]["images_per_s"],
            "inference_winner_accuracy": best["accuracy"],
            "eager_fp32_accuracy": baseline["accuracy"],
            "fast_training_fraction_of_peak": training["fast"]["utilisation"]["fraction_of_peak"],
            "best_inference_fraction_of_peak": best["utilisation_b1024"]["fraction_of_peak"],
            "targets": TARGETS,
            "targets_met": {
                "train_speedup": train_speedup >= TARGETS["train_speedup"],
                "inference_speedup": inference_speedup >= TARGETS["inference_speedup"],
            },
        },
        "training": training,
        "inference": {
            "accuracy_samples": len(pixels),
            "dataset": dataset,
            "max_accuracy_drop": MAX_ACCURACY_DROP,
            "onnx": {"source": onnx_source, "int8_method": int8_method, "ort_threads": cores},
            "variants": results,
        },
        "pipeline": pipeline_latency,
        "flops": {
            "forward_per_image_by_layer": flops,
            "forward_per_image": forward_per_image,
            "train_per_image": 3 * forward_per_image,
            "note": "2 x multiply-adds of conv and linear layers; training ~ 3x forward (forward + 2 backward GEMMs)",
        },
        "peak": {"sizes": args.peak_sizes, "gflops": peak, "gflops_by_size": peak_by_size},
        "hardware": {**hardware(), "cores": cores, "cpu_flags": _cpu_flags()},
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "git": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["markdown"] = format_markdown(result)
    write_json(Path(args.output), result)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(result["markdown"])
    print(result["markdown"])
    print(f"wrote {args.output} and {args.markdown} in {result['wall_s']} s")
    return result


def _cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {f: f in flags for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")}


if __name__ == "__main__":
    main()
