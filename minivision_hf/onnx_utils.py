"""ONNX export and ONNX Runtime helpers shared by `scripts/export_onnx.py` and `scripts/benchmark.py`: the export
graph, int8 quantisation (static QDQ or dynamic), session loading, batched inference and a throughput timer.

Library code only; the scripts read top to bottom and call these. Needs `onnx`, `onnxruntime` and `onnxscript` (the
torch.export-based ONNX exporter).
"""

import contextlib
import copy
import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 20  # torch 2.14's default; the dynamo exporter needs >= 18, QDQ per-channel needs >= 13
# Below 18 the dynamo exporter writes opset 18 and tries the onnx version converter, which fails on this graph
# (no adapter for Identity) and quietly keeps 18; `export_onnx` refuses any file whose opset is not the one asked.
MIN_OPSET = 18
# int8 schemes: static QDQ (activation ranges calibrated on training images, weights per output channel). How ORT's
# CPU kernels multiply each one decides whether it holds on every CPU (see minivision_hf/int8_emulation.py):
# - u8s8: uint8 activations x int8 weights. Exact on VNNI/AMX; on AVX2 without VNNI `vpmaddubsw` adds two u8 x s8
#   products into a saturating int16 (2 x 255 x 127 = 64770 > 32767): 98.91% vs 99.39% fp32 on an AVX2-only EPYC.
# - u8s8_reduce_range: the same with 7-bit weights (|w| <= 64): 2 x 255 x 64 = 32640 <= 32767, cannot saturate.
# - u8u8: uint8 weights; MLAS widens both operands to int16 (`vpmaddwd`) on AVX2: cannot saturate, but slower.
# - s8s8: int8 activations; on x86 MLAS shifts them to uint8 (+128) and runs the u8s8 kernels: saturates like u8s8.
# `float_logits` keeps the last Gemm (256 x 10, 0.03% of the FLOPs) in float: its logits otherwise come out on a
# uint8 grid (one step ~0.1) where near-ties round together.
QUANT_SCHEMES: dict[str, dict] = {
    "u8s8": {"activations": "uint8", "weights": "int8", "reduce_range": False, "float_logits": False},
    "u8s8_reduce_range": {"activations": "uint8", "weights": "int8", "reduce_range": True, "float_logits": True},
    "u8u8": {"activations": "uint8", "weights": "uint8", "reduce_range": False, "float_logits": True},
    "s8s8": {"activations": "int8", "weights": "int8", "reduce_range": False, "float_logits": False},
}
QUANT_METHODS = tuple(QUANT_SCHEMES)
# Schemes whose integer sums cannot saturate on any x86 CPU ORT supports (checked from the weights in the file too:
# int8_emulation.weight_pair_bounds). Only these may ship as model_quantized.onnx.
SATURATION_FREE = ("u8s8_reduce_range", "u8u8")
# Speeds within this fraction of each other are a tie in `choose_int8` (timings on a shared machine vary by more).
SPEED_MARGIN = 0.1


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# x86 ISA features the int8 and bf16 choices depend on (Linux /proc/cpuinfo flag names).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_features() -> dict[str, bool]:
    """Which of `CPU_FEATURES` this CPU has, from the package's one capability reader
    (`minivision_hf.fast.capabilities.detect_capabilities`: /proc/cpuinfo, else torch's CPU capability; honours the
    MINIVISION_ISA_LEVEL simulation, which ONNX Runtime's own kernel dispatch does not follow)."""
    from .fast.capabilities import detect_capabilities

    features = detect_capabilities().cpu_features
    return {f: f in features for f in CPU_FEATURES}


def int8_arithmetic(features: dict[str, bool], machine: str | None = None) -> str:
    """How ORT's kernels sum u8 x s8 products on this CPU: on x86 "amx", "vnni" (exact int32 dot products) or
    "vpmaddubsw" (pairs saturate at int16; AVX2 and AVX-512 without VNNI); elsewhere (ARM: dot products or widening
    multiplies) "int32", exact. `machine`: platform.machine(), this one's by default."""
    from .fast.capabilities import X86_MACHINES

    if (machine or platform.machine()) not in X86_MACHINES:
        return "int32"
    if features.get("amx_int8"):
        return "amx"
    if features.get("avx512_vnni") or features.get("avx_vnni"):
        return "vnni"
    return "vpmaddubsw"


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): ties exported files to the weights they came from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---- export -----------------------------------------------------------------------------------------------------


class OnnxExportGraph(nn.Module):
    """`MiniVisionForImageClassification` in eval mode as a plain pixel_values -> logits graph, for ONNX export.

    Same outputs as the model (the export script checks < 1e-4), with two exact rewrites that ONNX Runtime rewards:

    - ReLU before MaxPool, the seed's own order. The model computes MaxPool then ReLU (they commute exactly; that
      order is cheaper in eager PyTorch), but in a QDQ int8 graph a ReLU after the pool stops ORT from fusing it
      into the conv and forces the pool back to float: Conv -> ReLU -> MaxPool gives one QLinearConv (ReLU fused)
      and an int8 NHWC MaxPool, ~1.8x the int8 throughput at batch 1024 (measured on a 2-core AVX-512 VM).
    - The last block's BatchNorm folded into the first Linear layer (only a flatten in between, no padding).

    The other BatchNorms stay: a ReLU and a pool separate each from its own conv, and folding one forward into the
    next conv would be wrong at that conv's zero-padded border. ORT runs them as cheap per-channel ops.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("export a model in eval mode (BatchNorm must use its running statistics)")
        self.blocks = model.minivision.blocks
        self.classifier = copy.deepcopy(model.classifier)
        last_norm, first_linear = self.blocks[-1].norm, self.classifier[0]
        scale = last_norm.weight / torch.sqrt(last_norm.running_var + last_norm.eps)
        shift = last_norm.bias - last_norm.running_mean * scale
        positions = first_linear.in_features // scale.numel()  # the flatten is channel-major: C x (H * W)
        with torch.no_grad():
            first_linear.bias += first_linear.weight @ shift.repeat_interleave(positions)
            first_linear.weight *= scale.repeat_interleave(positions)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = pixel_values
        for i, block in enumerate(self.blocks):
            hidden = block.pool(torch.relu(block.conv(hidden)))
            if i < len(self.blocks) - 1:
                hidden = block.norm(hidden)
        return self.classifier(hidden.flatten(1))


def export_onnx(model: nn.Module, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export `model` (eval mode) to one self-contained .onnx file with a dynamic batch axis, using the
    torch.export-based exporter (`dynamo=True`): a clean Conv/MaxPool/Relu/BatchNormalization/Gemm graph, where the
    TorchScript exporter leaves Identity nodes and warns about the model's input-shape check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = OnnxExportGraph(model).eval()
    size, channels = model.config.image_size, model.config.num_channels
    example = torch.zeros(2, channels, size, size)  # batch 2: an example batch of 1 would be specialised to 1
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,  # weights inside the .onnx (3.3 MB), no model.onnx.data beside it
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    written = written_opset(path)
    if written != opset:  # the exporter falls back to another opset with a log line, not an error
        path.unlink()
        raise ValueError(f"asked for ONNX opset {opset}, the exporter wrote opset {written} to {path}; "
                         f"use an opset from {MIN_OPSET} to {max_opset()}")  # fmt: skip
    return path


def written_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset that the .onnx file at `path` declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# The default-domain operators the exported graphs hold: model.onnx, and the QDQ ops model_quantized.onnx adds.
EXPORT_OPS = ("BatchNormalization", "Conv", "Flatten", "Gemm", "MaxPool", "Relu", "Reshape", "QuantizeLinear",
              "DequantizeLinear")  # fmt: skip


@functools.cache
def max_opset() -> int:
    """The newest opset the export can write and ONNX Runtime can run: the installed onnx package's newest (the
    exporter's version converter cannot go past it), lowered to the newest at which ORT's CPU provider has a kernel
    for each of `EXPORT_OPS` (onnx 1.23 knows opset 28; ORT 1.32 has no QuantizeLinear-28 kernel, so an opset-28
    int8 model would not load)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    try:
        from onnxruntime.capi import _pybind_state

        kernels: dict[str, list[tuple[int, int]]] = {}
        for kernel in _pybind_state.get_all_opkernel_def():
            if kernel.provider == "CPUExecutionProvider" and kernel.domain in ("", "ai.onnx"):
                kernels.setdefault(kernel.op_name, []).append(tuple(kernel.version_range))
    except (ImportError, AttributeError):  # a private ORT API: without it, onnx's bound alone
        return newest

    def runs(op: str, v: int) -> bool:
        # ORT takes a kernel for a node whose schema is since `v` when the kernel starts at `v`, or spans it with a
        # closed range (kernel_registry.cc): an open-ended kernel since 25 does not run a QuantizeLinear-28 node
        return any(lo == v or lo < v <= hi < 2**31 - 1 for lo, hi in kernels.get(op, ()))

    for opset in range(newest, MIN_OPSET - 1, -1):
        if all(runs(op, onnx.defs.get_schema(op, opset).since_version) for op in EXPORT_OPS):
            return opset
    return MIN_OPSET


def set_metadata(path: Path, props: dict) -> None:
    """Write `props` into the model's metadata_props (values that are not strings are stored as JSON)."""
    import onnx

    model = onnx.load(str(path))
    merged = {p.key: p.value for p in model.metadata_props}
    merged.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    onnx.helper.set_model_props(model, merged)
    onnx.save(model, str(path))


def get_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# ---- quantisation -----------------------------------------------------------------------------------------------


def _calibration_reader(pixel_values: np.ndarray, batch_size: int = 64):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds `pixel_values` (N, 1, 28, 28) float32 in batches to the calibrator."""

        def __init__(self):
            self.batches = iter(range(0, len(pixel_values), batch_size))

        def get_next(self) -> dict | None:
            start = next(self.batches, None)
            return None if start is None else {INPUT_NAME: pixel_values[start : start + batch_size]}

    return Reader()


def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """ORT's recommended pre-pass: shape inference (symbolic + ONNX) and graph optimisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path))
    return Path(out_path)


@contextlib.contextmanager
def temporary_files_in(folder: str | Path) -> Iterator[None]:
    """Python's temporary files and folders go into `folder` meanwhile (tempfile.tempdir): ONNX Runtime's quantiser
    writes its calibration copies of the model into a TemporaryDirectory of its own, which a SIGKILL leaves in /tmp."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def quantize_int8(prepared_path: Path, out_path: Path, method: str, calibration: np.ndarray | None = None) -> Path:
    """Quantise a pre-processed fp32 model with one of `QUANT_SCHEMES` (static QDQ, min/max calibration on
    `calibration`: normalised pixel_values)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in QUANT_SCHEMES:
        raise ValueError(f"unknown quantisation method {method!r}; use one of {QUANT_METHODS}")
    if calibration is None or not len(calibration):
        raise ValueError(f"{method} needs calibration images")
    scheme = QUANT_SCHEMES[method]
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    exclude = [_output_node(prepared_path)] if scheme["float_logits"] else []
    quantize_static(
        str(prepared_path),
        str(out_path),
        _calibration_reader(np.ascontiguousarray(calibration, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        # BatchNorm stays float: ORT has no int8 kernel for it, and quantising its scale per channel only warns.
        op_types_to_quantize=["Conv", "Gemm", "MaxPool", "Relu"],
        nodes_to_exclude=exclude,
        per_channel=True,
        reduce_range=scheme["reduce_range"],
        activation_type=types[scheme["activations"]],
        weight_type=types[scheme["weights"]],
        calibrate_method=CalibrationMethod.MinMax,
    )
    return Path(out_path)


def _output_node(path: Path) -> str:
    """Name of the node that writes the graph's output (the last Gemm)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return next(n.name for n in graph.node if OUTPUT_NAME in n.output)


# ---- ONNX Runtime -----------------------------------------------------------------------------------------------


def ort_session(path: Path, threads: int | None = None):
    """A CPU InferenceSession with all graph optimisations and `threads` intra-op threads (default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_cores()
    options.inter_op_num_threads = 1  # the graph is a chain: nothing to run in parallel between ops
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session, pixel_values: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, num_labels) for normalised pixel_values (N, 1, 28, 28), run in batches."""
    if isinstance(pixel_values, torch.Tensor):
        pixel_values = pixel_values.detach().cpu().float().contiguous().numpy()
    chunks = [
        session.run([OUTPUT_NAME], {INPUT_NAME: pixel_values[start : start + batch_size]})[0]
        for start in range(0, len(pixel_values), batch_size)
    ]
    return np.concatenate(chunks)


# ---- the export, step by step (scripts/export_onnx.py) ----------------------------------------------------------

FP32_FILE = "model.onnx"  # the names Transformers.js / Optimum-style repos look for
QUANTIZED_FILE = "model_quantized.onnx"
REPORT_FILE = "export_report.json"


@dataclass
class ExportData:
    """What the export checks against: calibration images (training split), evaluation images (test split) and their
    labels, all as the image processor's pixel_values; and the PyTorch model's logits for the evaluation images."""

    calibration: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    mean: float
    std: float

    def accuracy(self, logits: np.ndarray) -> float:
        return float((logits.argmax(1) == self.labels).mean())

    def agreement(self, logits: np.ndarray) -> float:
        """Top-1 agreement with the PyTorch model."""
        return float((logits.argmax(1) == self.reference.argmax(1)).mean())


def load_export_data(model: nn.Module, processor, dataset: str, calibration_samples: int,
                     eval_samples: int | None) -> ExportData:  # fmt: skip
    """Decode the calibration and evaluation images once and run the PyTorch model on the evaluation images."""
    from .data import decode_to_uint8, load_mnist
    from .image_processing_minivision import to_pixel_values

    calibration_x, _ = decode_to_uint8(load_mnist(dataset, "train", calibration_samples))
    eval_x, eval_y = decode_to_uint8(load_mnist(dataset, "test", eval_samples))
    # The image processor's tensor path: uint8 -> /255 -> (x - mean) / std, as in training and evaluation.
    mean, std = float(np.ravel(processor.image_mean)[0]), float(np.ravel(processor.image_std)[0])
    pixels = to_pixel_values(eval_x, mean, std)
    with torch.no_grad():
        reference = torch.cat([model(pixel_values=pixels[i : i + 1024]).logits for i in range(0, len(pixels), 1024)])
    return ExportData(to_pixel_values(calibration_x, mean, std).numpy(), pixels.numpy(), eval_y.numpy(),
                      reference.numpy(), mean, std)  # fmt: skip


def speed_b1024(session, pixels: np.ndarray, time_s: float) -> dict:
    """Throughput of an ORT session at batch 1024 (the evaluation images, repeated if fewer)."""
    inputs = {INPUT_NAME: np.resize(pixels, (1024, *pixels.shape[1:]))}
    return throughput(lambda: session.run(None, inputs), 1024, time_s, min(0.5, time_s))


def check_fp32(path: Path, data: ExportData, threads: int, time_s: float) -> dict:
    """The exported fp32 graph against PyTorch: max |logit difference| at batch 1, batch 7 (the dynamic axis) and
    over the evaluation images; its accuracy; its speed at batch 1024."""
    session = ort_session(path, threads)
    logits = ort_logits(session, data.pixels)
    diffs = {
        "batch_1": float(np.abs(ort_logits(session, data.pixels[:1]) - data.reference[:1]).max()),
        "batch_7": float(np.abs(ort_logits(session, data.pixels[:7]) - data.reference[:7]).max()),
        f"eval_{len(data.pixels)}": float(np.abs(logits - data.reference).max()),
    }
    return {
        "max_abs_logit_diff": diffs,
        "accuracy": data.accuracy(logits),
        "pytorch_accuracy": data.accuracy(data.reference),
        "speed_b1024": speed_b1024(session, data.pixels, time_s),
    }


def evaluate_int8(path: Path, method: str, data: ExportData, threads: int, time_s: float,
                  emulate_samples: int | None = None, qemu_cpu: str | None = None) -> dict:  # fmt: skip
    """One int8 candidate: accuracy and speed with ONNX Runtime on this CPU, the weights' int16 pair-sum bound, and
    its accuracy under the emulated AVX2 arithmetic (`vpmaddubsw`, int16 saturation; minivision_hf.int8_emulation)
    on the first `emulate_samples` evaluation images (default: all). With `qemu_cpu` (e.g. "Haswell"), also ORT's
    own accuracy on that emulated CPU (`qemu_logits`), same images."""
    from . import int8_emulation

    session = ort_session(path, threads)
    logits = ort_logits(session, data.pixels)
    n = len(data.pixels) if emulate_samples is None else min(emulate_samples, len(data.pixels))
    emulated = int8_emulation.run_qdq(path, data.pixels[:n], "vpmaddubsw")
    emulated_accuracy = float((emulated["logits"].argmax(1) == data.labels[:n]).mean())
    fp32_on_subset = float((data.reference[:n].argmax(1) == data.labels[:n]).mean())
    bounds = int8_emulation.weight_pair_bounds(path)
    result = {
        "scheme": QUANT_SCHEMES[method],
        "accuracy": data.accuracy(logits),
        "top1_agreement": data.agreement(logits),
        "max_abs_logit_diff": float(np.abs(logits - data.reference).max()),
        "saturation_free_by_arithmetic": all(b["fits_int16"] for b in bounds.values()),
        "weight_pair_bounds": bounds,
        "avx2_emulated": {
            "samples": n,
            "accuracy": emulated_accuracy,
            "pytorch_accuracy_same_samples": fp32_on_subset,
            "saturated_pairs": emulated["saturated_pairs"],
            "saturated_fraction": emulated["saturated_fraction"],
        },
        "speed_b1024": speed_b1024(session, data.pixels, time_s),
        "bytes": Path(path).stat().st_size,
    }
    if qemu_cpu:
        logits = qemu_logits(path, data.pixels[:n], qemu_cpu)
        accuracy = float((logits.argmax(1) == data.labels[:n]).mean())
        result["qemu"] = {"cpu": qemu_cpu, "samples": n, "accuracy": accuracy}
    return result


_QEMU_RUNNER = """
import sys, numpy as np, onnxruntime as ort
pixels, out = np.load(sys.argv[1]), sys.argv[2]
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[3], options, providers=["CPUExecutionProvider"])
np.save(out, np.concatenate([session.run(None, {"pixel_values": pixels[i : i + 256]})[0]
                             for i in range(0, len(pixels), 256)]))
"""


def qemu_logits(path: Path, pixels: np.ndarray, cpu: str = "Haswell", timeout_s: float = 3600) -> np.ndarray:
    """Logits of an ONNX model run by ONNX Runtime on an emulated CPU: this interpreter under QEMU user mode
    (`qemu-x86_64 -cpu Haswell`: AVX2, FMA, no AVX-512, no VNNI). ORT's kernel dispatch reads the emulated CPUID, so
    its own AVX2 kernels run, instruction by instruction (`vpmaddubsw` saturating as on the real CPU). Needs the
    qemu-user package; ~60 s per int8 model on 10,000 images."""
    import shutil
    import subprocess
    import sys
    import tempfile

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-x86_64 not found (apt-get install qemu-user)")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pixels.npy", np.ascontiguousarray(pixels, dtype=np.float32))
        out = Path(tmp) / "logits.npy"
        subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _QEMU_RUNNER, str(Path(tmp) / "pixels.npy"),
                        str(out), str(path)], check=True, capture_output=True, timeout=timeout_s)  # fmt: skip
        return np.load(out)


def choose_int8(candidates: dict[str, dict], fp32_accuracy: float, max_drop: float,
                speed_margin: float = SPEED_MARGIN) -> tuple[str, str, bool]:  # fmt: skip
    """The scheme to ship: the fastest at batch 1024 among those that (1) cannot saturate on any x86 CPU (by the
    arithmetic, from the weights in the file), (2) stay within `max_drop` of fp32's accuracy here and (3) under the
    emulated AVX2 arithmetic. Schemes within `speed_margin` (a fraction) of the fastest count as equally fast and the
    first of them in `QUANT_METHODS` order wins, so timing noise on a busy machine does not flip the shipped file.
    Returns (name, why, qualified); with none qualifying, the most accurate saturation-free scheme, and
    qualified=False."""
    def holds(c: dict) -> bool:
        emulated = c["avx2_emulated"]
        return (c["saturation_free_by_arithmetic"] and c["accuracy"] >= fp32_accuracy - max_drop - 1e-9
                and emulated["accuracy"] >= emulated["pytorch_accuracy_same_samples"] - max_drop - 1e-9)  # fmt: skip

    for c in candidates.values():
        c["qualifies"] = holds(c)
    qualified = [m for m, c in candidates.items() if c["qualifies"]]
    if qualified:
        fastest = max(candidates[m]["speed_b1024"]["images_per_s"] for m in qualified)
        chosen = next(m for m in QUANT_METHODS if m in qualified
                      and candidates[m]["speed_b1024"]["images_per_s"] >= (1 - speed_margin) * fastest)  # fmt: skip
        why = (f"fastest at batch 1024 (ties within {speed_margin:.0%}: the first in {', '.join(QUANT_METHODS)}) "
               f"among the schemes that cannot saturate int16 on CPUs without VNNI and stay within "
               f"{max_drop * 100:g} points of fp32 here and under the emulated AVX2 arithmetic "
               f"({', '.join(qualified)})")  # fmt: skip
        return chosen, why, True
    safe = [m for m, c in candidates.items() if c["saturation_free_by_arithmetic"]] or list(candidates)
    chosen = max(safe, key=lambda m: min(candidates[m]["accuracy"], candidates[m]["avx2_emulated"]["accuracy"]))
    return chosen, f"no scheme within {max_drop * 100:g} points everywhere; kept the most accurate safe one", False


def onnx_metadata(model: nn.Module, source: str, data: ExportData) -> dict:
    """Labels, preprocessing and provenance for both files' metadata_props."""
    return {
        "model_type": model.config.model_type,
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "label2id": dict(model.config.label2id),
        "preprocessing": "MiniVisionImageProcessor (MNIST protocol), then pixel_values = (pixel / 255 - mean) / std",
        "image_mean": data.mean,
        "image_std": data.std,
        "source_model": str(source),
        "weights_sha256": weights_digest(model),
    }


def export_checks(fp32: dict, int8: dict, max_logit_diff: float, min_agreement: float, qualified: bool) -> dict:
    """Pass/fail of the export: fp32 parity, int8 agreement with PyTorch, and an int8 scheme that holds everywhere."""
    worst = max(fp32["max_abs_logit_diff"].values())
    return {
        "fp32_max_abs_logit_diff": {"value": worst, "limit": max_logit_diff, "passed": worst < max_logit_diff},
        "int8_top1_agreement": {"value": int8["top1_agreement"], "limit": min_agreement,
                                "passed": int8["top1_agreement"] >= min_agreement},  # fmt: skip
        "int8_holds_on_every_cpu": {"value": int(qualified), "limit": 1, "passed": qualified},
    }


# ---- timing -----------------------------------------------------------------------------------------------------


def throughput(fn: Callable[[], object], images_per_call: int, time_s: float = 2.0, warmup_s: float = 0.5,
               min_iters: int = 3) -> dict:  # fmt: skip
    """Steady-state speed of `fn`: calls it for `warmup_s` (at least twice), then times calls until both `time_s`
    seconds and `min_iters` calls have passed. Returns images/s over the timed calls, the median and p95 ms per
    call, and the call count."""
    start = time.perf_counter()
    for i in range(10**9):
        fn()
        if i >= 1 and time.perf_counter() - start >= warmup_s:
            break
    durations = []
    start = time.perf_counter()
    while len(durations) < min_iters or time.perf_counter() - start < time_s:
        t0 = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t0)
    total = sum(durations)
    return {
        "images_per_s": round(images_per_call * len(durations) / total, 1),
        "ms_per_call_p50": round(float(np.median(durations)) * 1e3, 4),
        "ms_per_call_p95": round(float(np.percentile(durations, 95)) * 1e3, 4),
        "calls": len(durations),
    }


__all__ = [
    "CPU_FEATURES",
    "cpu_features",
    "int8_arithmetic",
    "FP32_FILE",
    "QUANTIZED_FILE",
    "REPORT_FILE",
    "ExportData",
    "qemu_logits",
    "check_fp32",
    "choose_int8",
    "evaluate_int8",
    "export_checks",
    "load_export_data",
    "onnx_metadata",
    "speed_b1024",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "QUANT_METHODS",
    "QUANT_SCHEMES",
    "SATURATION_FREE",
    "OnnxExportGraph",
    "cpu_cores",
    "export_onnx",
    "get_metadata",
    "max_opset",
    "EXPORT_OPS",
    "ort_logits",
    "ort_session",
    "preprocess_for_quantization",
    "quantize_int8",
    "set_metadata",
    "throughput",
    "weights_digest",
    "written_opset",
]
