"""The measurements behind `scripts/benchmark.py`, one function each: the CPU's ISA and what it emulates, matmul
peaks, FLOPs, training speed and seconds to a target accuracy through `scripts.train`, the second conv alone,
inference variants (eager, ORT fp32, ORT int8), the pipeline's latency, and the markdown report.

Library code only; the script reads top to bottom and calls these. Every figure is wall-clock on this machine.
"""

import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import onnx_utils
from .configuration_minivision import MiniVisionConfig
from .fast.capabilities import X86_MACHINES, Capabilities

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"train_speedup": 5.0, "inference_speedup": 4.0, "time_to_accuracy_speedup": 10.0}
MAX_ACCURACY_DROP = 0.001  # 0.1 percentage points of test accuracy
# The steady training rate is the median gap between optimizer steps after the warm-up steps of scripts.train
# (`training.EpochRecorder(warmup=5)`): a run needs 2 steps past them for one gap, so 7 steps at least.
TRAIN_WARMUP_STEPS = 5
MIN_TRAIN_STEPS = TRAIN_WARMUP_STEPS + 2
INT8_PAYS = 1.05  # int8 "pays" when ORT int8 beats ORT fp32 by more than the run-to-run noise at batch 1024
# Which matmul peak each variant's arithmetic runs at.
VARIANT_DTYPE = {"eager_fp32": "fp32", "eager_bf16_channels_last": "bf16", "ort_fp32": "fp32", "ort_int8": "int8"}


# ---- the CPU and what to skip on it -----------------------------------------------------------------------------


def cpu_record() -> dict:
    """The CPU's ISA as every figure records it: model name, features that matter here, and what follows from them
    (bf16 in hardware or emulated; how int8 products are summed)."""
    from .fast.capabilities import detect_capabilities
    from .training import hardware

    features, caps = onnx_utils.cpu_features(), detect_capabilities()
    have = [name for name, present in features.items() if present]
    return {
        "cpu": hardware()["cpu"],
        "features": have,
        "bf16": "native" if caps.cpu_bf16_native else "emulated",
        "int8_arithmetic": onnx_utils.int8_arithmetic(features, caps.machine),
        "isa": isa_label(caps, have),
    }


def isa_label(caps: Capabilities, have: list[str]) -> str:
    """The ISA as a figure records it: the x86 features of onnx_utils.CPU_FEATURES this CPU has; on an x86 CPU with
    none of them its ISA level (e.g. "x86-64-v2"); off x86 the machine and its features that matter to int8 and bf16
    kernels (ARM: dot products, int8 matmul, bf16, SVE)."""
    if caps.machine not in X86_MACHINES:
        return " ".join([caps.machine, *caps.recorded_features()])
    return " ".join(have) or f"{caps.isa_level} (none of {', '.join(onnx_utils.CPU_FEATURES)})"


def emulation_plan(cpu: dict, quick: bool) -> dict:
    """What the run skips or caps because this CPU emulates it: without AVX-512 BF16 / AMX, bf16 matmuls run at
    ~1/100 of fp32 (0.9 GFLOP/s on an AVX2-only EPYC), so the bf16 peak and the bf16 inference variant measure the
    emulation, not the model. --quick skips them; the full run caps them (one small size, a short time) and marks
    them. (The second conv is timed in the precision the fast path trains in: fp32 there.) Also --quick skips the
    seconds-to-accuracy runs (whole epochs)."""
    emulated = cpu["bf16"] != "native"
    notes = []
    if emulated:
        how = "skipped" if quick else "capped (n=1024, 0.25 s) and marked emulated"
        notes.append(f"bf16 is emulated on this CPU (no avx512_bf16 / amx_bf16): bf16 matmul peak and bf16 inference "
                     f"variant {how}; the fast path trains in fp32 here, the second conv is timed in fp32")  # fmt: skip
    if quick:
        notes.append("seconds to the target accuracy skipped in --quick (whole epochs; the full run measures them)")
    return {
        "bf16_emulated": emulated,
        "run_bf16": not (emulated and quick),
        "bf16_time_s": 0.25 if emulated else None,
        "bf16_peak_sizes": [1024] if emulated else None,
        "time_to_accuracy": not quick,
        "notes": notes,
    }


# ---- FLOPs and peak ---------------------------------------------------------------------------------------------


def forward_flops(config: MiniVisionConfig) -> dict[str, int]:
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
        speed = onnx_utils.throughput(lambda: matmul(a, b), 1, time_s, warmup_s=min(0.5, time_s), min_iters=2)
    except (RuntimeError, NotImplementedError, AttributeError):
        return None
    return round(2 * n**3 * speed["images_per_s"] / 1e9, 1)  # "images" = matmuls here


def matmul_peaks(sizes: list[int], time_s: float, plan: dict) -> dict:
    """The best n x n matmul rate per dtype over `sizes`; bf16 skipped or capped where the CPU emulates it."""
    by_size, notes = {}, {}
    for dtype in ("fp32", "bf16", "int8"):
        dtype_sizes, dtype_time = sizes, time_s
        if dtype == "bf16" and plan["bf16_emulated"]:
            if not plan["run_bf16"]:
                by_size[dtype], notes[dtype] = {}, "skipped: emulated on this CPU"
                continue
            dtype_sizes, dtype_time = plan["bf16_peak_sizes"], plan["bf16_time_s"]
            notes[dtype] = "emulated on this CPU (capped)"
        by_size[dtype] = {n: matmul_peak_gflops(dtype, n, dtype_time) for n in dtype_sizes}
    gflops = {dtype: max((v for v in rates.values() if v), default=None) for dtype, rates in by_size.items()}
    return {"sizes": sizes, "gflops": gflops, "gflops_by_size": by_size, "notes": notes}


def utilisation(images_per_s: float, flops_per_image: float, peak_gflops: float | None) -> dict:
    achieved = images_per_s * flops_per_image / 1e9
    return {
        "achieved_gflops": round(achieved, 2),
        "peak_gflops": peak_gflops,
        "fraction_of_peak": round(achieved / peak_gflops, 4) if peak_gflops else None,
    }


# ---- training ---------------------------------------------------------------------------------------------------


def train_run(path: str, dataset: str, extra: list[str], batch_size: int, timeout_s: float | None = None) -> dict:
    """One `scripts.train` run of a data path ("plain" or "fast") in its own process (the fast path changes
    process-wide state: glibc's malloc settings, thread pools, which must not leak into the other path or the
    inference measurements), stopped after `timeout_s` if given (subprocess.TimeoutExpired); returns its run
    record."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([
            sys.executable, "-m", "scripts.train", "--dataset", dataset, "--data-path", path,
            "--batch-size", str(batch_size), "--no-progress", "--output-dir", tmp, "--save-total-limit", "1", *extra,
        ], cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=timeout_s,
           env={**os.environ, "MINIVISION_PARENT_PID": str(os.getpid())})  # fmt: skip  # scripts.stop_with_parent
        return json.loads((Path(tmp) / "run_record.json").read_text())


def training_speed(dataset: str, steps: int, rounds: int, batch_size: int, max_train: int | None,
                   forward_per_image: int, peak: dict) -> dict:  # fmt: skip
    """Steady-state training images/s (median optimizer step after 5 warm-up steps) of the plain and fast paths,
    alternating over `rounds` so a busy spell on a shared machine hits both; each path's figure is its median."""
    extra = ["--max-steps", str(steps), "--epochs", "1", "--max-eval-samples", "256",
             *(["--max-train-samples", str(max_train)] if max_train else [])]  # fmt: skip
    records = {"plain": [], "fast": []}
    for round_index in range(rounds):
        for path in records:
            record = train_run(path, dataset, extra, batch_size)
            if record.get("steady_images_per_s") is None:  # no step past the warm-up was timed
                raise RuntimeError(f"the {path} training run timed no step after its {TRAIN_WARMUP_STEPS} warm-up "
                                   f"steps ({record.get('global_step')} steps in all; {steps} asked): pass at least "
                                   f"{MIN_TRAIN_STEPS} steps")  # fmt: skip
            records[path].append(record)
            print(f"training round {round_index + 1}/{rounds}, {path}: {record['steady_images_per_s']:,.0f} images/s")
    training = {"batch_size": batch_size, "steps": steps, "rounds": rounds, "dataset": dataset}
    for path, runs in records.items():
        record = runs[0]
        if record["dataset"]["train"] < steps * batch_size:
            print(f"note: {record['dataset']['train']} training rows < steps x batch: epoch-end evaluations fall "
                  "inside the timed steps")  # fmt: skip
        rates = [r["steady_images_per_s"] for r in runs]
        speed = statistics.median(rates)
        bf16, channels_last = bool(record["bf16"]), bool(record["args"]["channels_last"])
        fast = record.get("fast_kernels") or {}
        fused = fast.get("kernels_built")
        peak_dtype = "bf16" if bf16 else "fp32"
        augmentation = "batched tensor augmentation" if path == "fast" else "per-sample PIL transforms"
        training[path] = {
            "steady_images_per_s": speed,
            "rounds_images_per_s": rates,
            "bf16": bf16,
            "channels_last": channels_last,
            "fused_kernels": bool(fused),
            "kernel_paths": {name: block.get("path") if isinstance(block, dict) else str(block)
                             for name, block in (fast.get("blocks") or {}).items()},  # fmt: skip
            "configuration": f"{augmentation}, {'bf16 autocast' if bf16 else 'fp32'}, "
            f"{'channels_last' if channels_last else 'NCHW'}"
            f"{', fused conv/max-pool/ReLU kernels' if fused else ''}"
            f"{', freed memory kept in the heap' if record.get('malloc_keeps_freed_memory') else ''}",
            "train_rows": record["dataset"]["train"],
            "global_step": record["global_step"],
            "utilisation": {**utilisation(speed, 3 * forward_per_image, peak[peak_dtype]), "peak_dtype": peak_dtype},
        }
    plain, fast = training["plain"]["steady_images_per_s"], training["fast"]["steady_images_per_s"]
    training["train_speedup"] = round(fast / plain, 3)
    training["round_speedups"] = [
        round(f["steady_images_per_s"] / p["steady_images_per_s"], 3) for p, f in zip(records["plain"], records["fast"])
    ]
    return training


def time_to_accuracy(dataset: str, target: float, max_epochs: int, batch_size: int,
                     extra: list[str] | None = None, path_args: dict[str, list[str]] | None = None,
                     rounds: int = 1) -> dict:  # fmt: skip
    """Seconds of training until the first epoch whose test accuracy reaches `target`, for the plain and the fast
    path on this machine (`scripts.train --target-accuracy`, `max_epochs` at most; `path_args` maps a path to its
    own train.py arguments, e.g. `--recipe plus --epochs 2`, given after the shared ones so they win), alternating
    over `rounds` rounds (same seed each time: what varies is the machine) so a busy spell on a shared machine hits
    both. Each path's figures are those of its median run by training seconds; a path counts as reaching the target
    only if every run of it did. `train_s` excludes evaluations (the run record's figure); `wall_s` includes them."""
    result = {"target": target, "max_epochs": max_epochs, "dataset": dataset, "rounds": rounds}
    runs = {"plain": [], "fast": []}
    for round_index in range(rounds):
        for path in runs:
            own = list((path_args or {}).get(path, []))
            record = train_run(path, dataset, ["--target-accuracy", str(target), "--epochs", str(max_epochs),
                                               *(extra or []), *own], batch_size)  # fmt: skip
            reached = record.get("target_accuracy") or {}
            runs[path].append({
                "recipe": record.get("recipe"),
                "train_args": own,
                "reached": bool(reached.get("reached")),
                "epoch": reached.get("epoch"),
                "accuracy": reached.get("accuracy"),
                "train_s": reached.get("train_s"),
                "wall_s": reached.get("wall_s"),
                "bf16": bool(record.get("bf16")),
            })  # fmt: skip
            state = f"{reached['train_s']:.1f} s (epoch {reached['epoch']})" if reached.get("reached") else "missed"
            print(f"time to {target:.3f} accuracy, round {round_index + 1}/{rounds}, {path}: {state}")
    for path, path_runs in runs.items():
        reached = [r for r in path_runs if r["reached"]]
        median = sorted(reached, key=lambda r: r["train_s"])[(len(reached) - 1) // 2] if reached else path_runs[0]
        result[path] = {**median, "reached": len(reached) == len(path_runs),
                        "rounds_train_s": [r["train_s"] for r in path_runs]}  # fmt: skip
    plain, fast = result["plain"], result["fast"]
    both = plain["reached"] and fast["reached"] and fast["train_s"]
    result["speedup"] = round(plain["train_s"] / fast["train_s"], 3) if both else None
    return result


def conv2_step_ms(config: MiniVisionConfig, batch: int, time_s: float, bf16: bool = True) -> dict:
    """The second conv block alone (conv + max-pool + ReLU + BatchNorm), forward and backward at the training batch
    in the precision the fast path trains in on this CPU (`bf16`: under bf16 autocast; else fp32), channels_last,
    both ways: PyTorch's ops (oneDNN's conv) and the block as the fast path runs it (`apply_fast_kernels`; its kernel
    path is recorded). About 78% of the training FLOPs sit in this convolution, so it bounds how short a training
    step can get on this CPU."""
    from .modeling_minivision import MiniVisionForImageClassification

    size = config.image_size // config.pool_size
    fmt = torch.channels_last
    model = MiniVisionForImageClassification(config).train()
    plain_block = model.minivision.blocks[1]
    fast_model = copy.deepcopy(model)
    path = None
    try:
        from .fast import apply_fast_kernels

        report = apply_fast_kernels(fast_model, device="cpu", bf16=bf16)
        path = next((b.get("path") if isinstance(b, dict) else str(b) for name, b in report["blocks"].items()
                     if name.endswith("1")), None)  # fmt: skip
    except Exception as error:  # noqa: BLE001 (no compiler, a build error: the fast figure is then absent)
        print(f"note: fast second-conv timing skipped ({error})")
        fast_model = None
    x = torch.randn(batch, config.conv_channels[0], size, size).contiguous(memory_format=fmt).requires_grad_(True)

    def step(block):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = block(x)
            out.float().sum().backward()

        return run

    warmup = min(0.5, time_s)
    result = {"batch": batch, "precision": "bf16" if bf16 else "fp32", "fast_path": path, "winograd_ms": None}
    result["ms"] = onnx_utils.throughput(step(plain_block.to(memory_format=fmt)), batch, time_s, warmup)[
        "ms_per_call_p50"
    ]
    if fast_model is not None:
        fast_block = fast_model.minivision.blocks[1].to(memory_format=fmt)
        result["winograd_ms"] = onnx_utils.throughput(step(fast_block), batch, time_s, warmup)["ms_per_call_p50"]
    return result


# ---- inference --------------------------------------------------------------------------------------------------


def onnx_matches(onnx_dir: Path, digest: str) -> bool:
    """Whether `onnx_dir` holds model.onnx and model_quantized.onnx exported from the weights with this digest."""
    files = [Path(onnx_dir) / onnx_utils.FP32_FILE, Path(onnx_dir) / onnx_utils.QUANTIZED_FILE]
    return all(f.exists() and onnx_utils.get_metadata(f).get("weights_sha256") == digest for f in files)


def inference_speed(model, onnx_dir: Path, pixels: torch.Tensor, labels: np.ndarray, time_s: float, peak: dict,
                    forward_per_image: int, plan: dict) -> dict:  # fmt: skip
    """Images/s at batch 1 and 1024 and test accuracy of each variant: eager fp32 (the model as loaded), eager bf16
    autocast + channels_last (skipped or capped where bf16 is emulated), ORT fp32 and ORT int8 (intra-op threads =
    cores). Then the winner (fastest at batch 1024 within 0.1 points of eager fp32's accuracy) and whether int8 pays
    here (ORT int8 against ORT fp32)."""
    cores = onnx_utils.cpu_cores()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ort_fp32 = onnx_utils.ort_session(onnx_dir / onnx_utils.FP32_FILE, cores)
    ort_int8 = onnx_utils.ort_session(onnx_dir / onnx_utils.QUANTIZED_FILE, cores)

    def eager_fp32(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(pixel_values=x).logits

    def eager_bf16_channels_last(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model_cl(pixel_values=x.contiguous(memory_format=torch.channels_last)).logits.float()

    variants = {"eager_fp32": eager_fp32}
    if plan["run_bf16"]:
        variants["eager_bf16_channels_last"] = eager_bf16_channels_last
    variants["ort_fp32"] = lambda x: ort_fp32.run(None, {onnx_utils.INPUT_NAME: x.numpy()})[0]
    variants["ort_int8"] = lambda x: ort_int8.run(None, {onnx_utils.INPUT_NAME: x.numpy()})[0]
    inputs = {1: pixels[:1].clone(), 1024: pixels[torch.arange(1024) % len(pixels)].contiguous()}
    results = {}
    for name, fn in variants.items():
        logits = np.concatenate([np.asarray(fn(pixels[i : i + 1024])) for i in range(0, len(pixels), 1024)])
        r = results[name] = {"accuracy": float((logits.argmax(1) == labels).mean())}
        emulated = name == "eager_bf16_channels_last" and plan["bf16_emulated"]
        seconds = plan["bf16_time_s"] if emulated else time_s
        r["emulated"] = emulated
        for batch, x in inputs.items():
            call = functools.partial(fn, x)
            r[f"batch_{batch}"] = onnx_utils.throughput(call, batch, seconds, warmup_s=min(0.5, seconds))
        print(f"{name}: {r['batch_1']['images_per_s']:,.0f} / {r['batch_1024']['images_per_s']:,.0f} images/s "
              f"at batch 1 / 1024, accuracy {r['accuracy']:.4f}{' (bf16 emulated)' if emulated else ''}")  # fmt: skip
    baseline = results["eager_fp32"]
    for name, r in results.items():
        r["speedup_b1024"] = round(r["batch_1024"]["images_per_s"] / baseline["batch_1024"]["images_per_s"], 3)
        r["speedup_b1"] = round(r["batch_1"]["images_per_s"] / baseline["batch_1"]["images_per_s"], 3)
        r["accurate"] = r["accuracy"] >= baseline["accuracy"] - MAX_ACCURACY_DROP - 1e-9
        dtype = VARIANT_DTYPE[name] if peak.get(VARIANT_DTYPE[name]) else "fp32"  # no int8/bf16 peak: vs fp32's
        util = utilisation(r["batch_1024"]["images_per_s"], forward_per_image, peak.get(dtype))
        r["utilisation_b1024"] = {**util, "peak_dtype": dtype}
    accurate = [name for name in results if results[name]["accurate"]]  # eager fp32 always is
    winner = max(accurate, key=lambda name: results[name]["batch_1024"]["images_per_s"])
    return {
        "accuracy_samples": len(pixels),
        "max_accuracy_drop": MAX_ACCURACY_DROP,
        "ort_threads": cores,
        "variants": results,
        "winner": winner,
        "inference_speedup": results[winner]["speedup_b1024"],
        "int8_verdict": int8_verdict(results["ort_int8"], results["ort_fp32"]),
    }


def int8_verdict(int8: dict, fp32: dict) -> dict:
    """Whether ORT int8 keeps accuracy (within 0.1 points of ORT fp32) and pays (faster than ORT fp32 at batch
    1024 by more than `INT8_PAYS`) on this CPU, and the sentence the report prints."""
    gap = int8["accuracy"] - fp32["accuracy"]
    ratio = int8["batch_1024"]["images_per_s"] / fp32["batch_1024"]["images_per_s"]
    ratio_b1 = int8["batch_1"]["images_per_s"] / fp32["batch_1"]["images_per_s"]
    keeps, pays = gap >= -MAX_ACCURACY_DROP - 1e-9, ratio > INT8_PAYS
    if keeps and pays:
        advice = "int8 keeps accuracy and pays on this CPU: model_quantized.onnx"
    elif keeps and ratio_b1 > INT8_PAYS:
        advice = ("int8 keeps accuracy but does not pay at batch 1024 on this CPU, only one image at a time: "
                  "model.onnx (fp32) for batches, model_quantized.onnx for single images")  # fmt: skip
    elif keeps:
        advice = "int8 keeps accuracy but does not pay on this CPU: use model.onnx (fp32)"
    else:
        advice = "int8 loses accuracy on this CPU: use model.onnx (fp32)"
    return {"accuracy_gap_points": round(gap * 100, 3), "speedup_vs_ort_fp32_b1024": round(ratio, 3),
            "speedup_vs_ort_fp32_b1": round(ratio_b1, 3), "keeps_accuracy": keeps, "pays": pays,
            "advice": advice}  # fmt: skip


# ---- the pipeline -----------------------------------------------------------------------------------------------


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


def pipeline_latency(model_id: str, test_ds, calls: int) -> dict:
    """`pipeline("image-classification")` latency, one image per call: MNIST's own 28x28 digits (PIL) and a 400x400
    RGBA drawing handed over as an array and as a PIL image (the stock pipeline's `load_image` converts PIL images to
    RGB, dropping the alpha; the record keeps both predictions to show what the model's pipeline does with it)."""
    from transformers import pipeline

    from .pipeline_minivision import MiniVisionImageClassificationPipeline

    # config.json declares the model's own pipeline (custom_pipelines): in-package, name its class.
    classify = pipeline(
        "image-classification", model=model_id, trust_remote_code=False,
        pipeline_class=MiniVisionImageClassificationPipeline,
    )  # fmt: skip
    digits = [test_ds[i]["image"] for i in range(min(len(test_ds), calls))]
    drawing = np.array(drawing_like_image())  # (400, 400, 4) uint8: arrays reach the processor with their alpha
    return {
        "mnist_28x28_L": latency_ms(classify, digits, calls),
        "drawing_400x400_RGBA": latency_ms(classify, [drawing], calls),
        "drawing_prediction": classify(drawing)[0]["label"],  # "7" from a trained model
        "drawing_prediction_as_pil_image": classify(drawing_like_image())[0]["label"],
    }


# ---- summary ----------------------------------------------------------------------------------------------------


def summarize(training: dict, inference: dict, time_to_accuracy: dict | None, cpu: dict) -> dict:
    """The headline figures and whether each target is met (a speedup that was not measured is not met)."""
    winner = inference["variants"][inference["winner"]]
    eager = inference["variants"]["eager_fp32"]
    speedups = {"train_speedup": training["train_speedup"], "inference_speedup": inference["inference_speedup"],
                "time_to_accuracy_speedup": (time_to_accuracy or {}).get("speedup")}  # fmt: skip
    return {
        **speedups,
        "train_fast_images_per_s": training["fast"]["steady_images_per_s"],
        "train_plain_images_per_s": training["plain"]["steady_images_per_s"],
        "inference_winner": inference["winner"],
        "inference_winner_images_per_s_b1024": winner["batch_1024"]["images_per_s"],
        "eager_fp32_images_per_s_b1024": eager["batch_1024"]["images_per_s"],
        "inference_winner_accuracy": winner["accuracy"],
        "eager_fp32_accuracy": eager["accuracy"],
        "int8_pays": inference["int8_verdict"]["pays"],
        "int8_keeps_accuracy": inference["int8_verdict"]["keeps_accuracy"],
        "fast_training_fraction_of_peak": training["fast"]["utilisation"]["fraction_of_peak"],
        "best_inference_fraction_of_peak": winner["utilisation_b1024"]["fraction_of_peak"],
        "targets": TARGETS,
        "targets_met": {k: v is not None and v >= TARGETS[k] for k, v in speedups.items()},
        "isa": cpu["isa"],
    }


def tag_isa(sections: dict[str, dict | None], isa: str) -> dict[str, dict | None]:
    """The record's sections, each carrying the CPU's ISA features it was measured on (None stays None)."""
    return {name: None if section is None else {**section, "isa": isa} for name, section in sections.items()}


# ---- report -----------------------------------------------------------------------------------------------------


def _percent(fraction: float | None) -> str:
    return f"{fraction:.1%}" if fraction is not None else "n/a"


def format_markdown(r: dict) -> str:
    """The record as markdown: one table per measurement, each headed by the CPU's ISA it was measured on."""
    hw, tr, inf, s, cpu = r["hardware"], r["training"], r["inference"], r["summary"], r["cpu"]
    isa = f"[{cpu['isa']}]"
    lines = [
        f"## Mini-Vision-V2 benchmark{' (quick)' if r['quick'] else ''}",
        "",
        f"{hw['cpu']}, {hw['cores']} cores, torch {r['versions']['torch']} ({hw['torch_threads']} threads), "
        f"onnxruntime {r['versions']['onnxruntime']}; commit {str(r['git']['commit'])[:10]}"
        f"{' (dirty)' if r['git']['dirty'] else ''}; {r['time_utc']}",
        "",
        f"CPU ISA features: {cpu['isa']}; bf16 {cpu['bf16']}; int8 products summed by {cpu['int8_arithmetic']}.",
        *([""] + [f"- {note}" for note in r["plan"]["notes"]] if r["plan"]["notes"] else []),
        "",
        f"### Training (Trainer, batch {tr['batch_size']}, {tr['steps']} steps, median step after warm-up; "
        f"median of {tr['rounds']} alternating rounds) {isa}",
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
    ]
    floor = tr.get("conv2_floor")
    if floor:
        lines += [
            "",
            f"A fast step takes {floor['fast_step_ms']:.1f} ms; {TARGETS['train_speedup']:g}x the plain path allows "
            f"{floor['step_ms_for_target']:.1f} ms. The second conv block alone (conv + max-pool + ReLU, forward and "
            f"backward, {floor.get('precision', 'bf16')}, batch {floor['batch']}) takes {floor['ms']:.1f} ms with "
            "PyTorch's ops"
            + (f", {floor['winograd_ms']:.1f} ms as the fast path runs it ({floor['fast_path']})."
               if floor.get("winograd_ms") else "."),  # fmt: skip
        ]
    tta = r.get("time_to_accuracy")
    lines += ["", f"### Seconds of training to {r['args']['target_accuracy']:.1%} test accuracy {isa}", ""]
    if tta:
        cell = lambda v, f: format(v, f) if v is not None else "n/a"  # noqa: E731
        lines += ["| path | train.py arguments | reached | epoch | training s | wall s (with evaluations) |",
                  "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for name in ("plain", "fast"):
            t = tta[name]
            used = " ".join(t.get("train_args") or ["--recipe", str(t.get("recipe"))])
            lines.append(f"| {name} | `{used}` | {'yes' if t['reached'] else 'no'} | "
                         f"{cell(t['epoch'], '.0f')} | {cell(t['train_s'], '.1f')} | {cell(t['wall_s'], '.1f')} |")
        speedup = f"{tta['speedup']:.2f}x" if tta["speedup"] else "n/a"
        rounds = tta.get("rounds", 1)
        how = (f"medians of {rounds} alternating rounds, the median run shown; training s per round: plain "
               + ", ".join(cell(s, ".1f") for s in tta["plain"].get("rounds_train_s", []))
               + "; fast " + ", ".join(cell(s, ".1f") for s in tta["fast"].get("rounds_train_s", []))
               + "; ") if rounds > 1 else ""  # fmt: skip
        lines += ["", f"**time_to_accuracy_speedup = {speedup}** ({how}plain / fast training seconds; target >= "
                      f"{TARGETS['time_to_accuracy_speedup']:g})."]  # fmt: skip
    else:
        lines.append("Not measured in this run (--quick, or --no-time-to-accuracy).")
    lines += [
        "",
        f"### Inference ({inf['accuracy_samples']} test images for accuracy) {isa}",
        "",
        "| variant | batch 1 images/s | batch 1024 images/s | vs eager fp32 @1024 | accuracy | GFLOP/s @1024 "
        "| % of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in inf["variants"].items():
        util = v["utilisation_b1024"]
        lines.append(
            f"| {name}{' (emulated bf16)' if v.get('emulated') else ''} | {v['batch_1']['images_per_s']:,.0f} | "
            f"{v['batch_1024']['images_per_s']:,.0f} | {v['speedup_b1024']:.2f}x | {v['accuracy']:.4f} | "
            f"{util['achieved_gflops']:.1f} | {_percent(util['fraction_of_peak'])} ({util['peak_dtype']}) |"
        )
    verdict = inf["int8_verdict"]
    lines += [
        "",
        f"**inference_speedup = {s['inference_speedup']:.2f}x** ({s['inference_winner']}, accuracy at most "
        f"{MAX_ACCURACY_DROP * 100:g} points below eager fp32; target >= {TARGETS['inference_speedup']:g}).",
        "",
        f"ONNX int8 ({inf['onnx']['file']}, {inf['onnx']['int8_method']}) against ONNX fp32 on this CPU: "
        f"{verdict['accuracy_gap_points']:+.2f} points, {verdict['speedup_vs_ort_fp32_b1024']:.2f}x at batch 1024, "
        f"{verdict['speedup_vs_ort_fp32_b1']:.2f}x at batch 1: {verdict['advice']}.",
        "",
        f'### pipeline("image-classification"), one image per call {isa}',
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
        f"{r['pipeline']['drawing_prediction_as_pil_image']!r} as a PIL image (the model's pipeline keeps the "
        "transparent layer's alpha).",
    ]
    peak, flops = r["peak"], r["flops"]
    lines += [
        "",
        f"### Arithmetic: {flops['forward_per_image'] / 1e6:.2f} MFLOP per image forward, "
        f"~{flops['train_per_image'] / 1e6:.1f} training; matmul peak = best of n x n matmuls, n in {peak['sizes']} "
        f"{isa}",
        "",
        "| dtype | GFLOP/s |",
        "|---|---:|",
        *(f"| {k} | {v:,.0f}{' (' + peak['notes'][k] + ')' if k in peak['notes'] else ''} |" if v
          else f"| {k} | n/a{' (' + peak['notes'][k] + ')' if k in peak['notes'] else ''} |"
          for k, v in peak["gflops"].items()),  # fmt: skip
        "",
        "The peaks are PyTorch's own matmuls, timed in this run: a percentage says how close a variant gets to what "
        "PyTorch reaches on a large matmul; ONNX Runtime's kernels can run above it.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "MAX_ACCURACY_DROP",
    "TARGETS",
    "conv2_step_ms",
    "cpu_record",
    "drawing_like_image",
    "emulation_plan",
    "format_markdown",
    "forward_flops",
    "inference_speed",
    "int8_verdict",
    "latency_ms",
    "matmul_peak_gflops",
    "matmul_peaks",
    "onnx_matches",
    "summarize",
    "tag_isa",
    "pipeline_latency",
    "time_to_accuracy",
    "train_run",
    "training_speed",
    "utilisation",
]
