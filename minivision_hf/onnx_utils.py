"""ONNX export and ONNX Runtime helpers shared by `scripts/export_onnx.py` and `scripts/benchmark.py`: the export
graph, int8 quantisation (static QDQ or dynamic), session loading, batched inference and a throughput timer.

Library code only; the scripts read top to bottom and call these. Needs `onnx`, `onnxruntime` and `onnxscript` (the
torch.export-based ONNX exporter).
"""

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 20  # torch 2.14's default; the dynamo exporter needs >= 18, QDQ per-channel needs >= 13
# Static QDQ: activations uint8 or int8, weights int8 per output channel; dynamic: weights int8, activations
# quantised at run time per tensor (ConvInteger / MatMulInteger).
QUANT_METHODS = ("static_qdq_u8", "static_qdq_s8", "dynamic")


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    return path


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


def quantize_int8(prepared_path: Path, out_path: Path, method: str, calibration: np.ndarray | None = None) -> Path:
    """Quantise a pre-processed fp32 model with one of `QUANT_METHODS`; static methods need `calibration` images
    (normalised pixel_values) to set the activation ranges (min/max)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method == "dynamic":
        quantize_dynamic(str(prepared_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8)
    elif method in ("static_qdq_u8", "static_qdq_s8"):
        if calibration is None or not len(calibration):
            raise ValueError(f"{method} needs calibration images")
        quantize_static(
            str(prepared_path),
            str(out_path),
            _calibration_reader(np.ascontiguousarray(calibration, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            # BatchNorm stays float: ORT has no int8 kernel for it, and quantising its scale per channel only warns.
            op_types_to_quantize=["Conv", "Gemm", "MaxPool", "Relu"],
            per_channel=True,
            reduce_range=False,  # AVX512-VNNI (and AMX) accumulate int8 products without saturation
            activation_type=QuantType.QUInt8 if method.endswith("u8") else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    else:
        raise ValueError(f"unknown quantisation method {method!r}; use one of {QUANT_METHODS}")
    return Path(out_path)


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
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "QUANT_METHODS",
    "OnnxExportGraph",
    "cpu_cores",
    "export_onnx",
    "get_metadata",
    "ort_logits",
    "ort_session",
    "preprocess_for_quantization",
    "quantize_int8",
    "set_metadata",
    "throughput",
    "weights_digest",
]
