"""A numpy interpreter for static QDQ int8 ONNX models that reproduces how x86 CPUs without VNNI multiply them.

ONNX Runtime runs a QDQ Conv or Gemm as an integer GEMM over the raw stored bytes (MLAS): uint8 activations A times
int8 weights B, summed over K into int32, zero points corrected afterwards. How the sum over K is formed depends on
the CPU:

- AVX-512 VNNI / AVX-VNNI (`vpdpbusd`) and AMX multiply four u8 x s8 pairs straight into an int32: exact.
- AVX2 without VNNI (and AVX-512 without VNNI) use `vpmaddubsw`: it multiplies adjacent u8 x s8 pairs along K and
  adds each *two* products into an int16 **with saturation** (|sum| > 32767 is clamped), then `vpmaddwd` adds the
  int16 pairs into int32. Two products of 255 x 127 = 32385 reach 64770, so an 8-bit weight scheme can saturate;
  with 7-bit weights (ORT's `reduce_range`, |w| <= 64) two products are at most 2 x 255 x 64 = 32640 <= 32767 and
  never do. A uint8 x uint8 GEMM widens both operands to int16 first (`vpmaddwd` on 16-bit values): exact too.

`run_qdq(path, pixel_values, arithmetic)` evaluates the whole graph in numpy with either arithmetic ("exact" or
"vpmaddubsw"), and counts the saturated pairs, so the AVX2 behaviour can be checked on any CPU. The pairing follows
MLAS: adjacent K elements, K ordered (kernel row, kernel column, input channel) as in the NHWC convolution ORT
runs on x86 (K padded with a zero to an even length). Float ops between the integer GEMMs (BatchNormalization,
MaxPool, Relu, Reshape) run in float32, as ORT's QDQ graph defines them.

Supports the ops our export produces: QuantizeLinear, DequantizeLinear, Conv (2-D, group 1), Gemm (transB=1),
MaxPool, Relu, BatchNormalization, Reshape, Flatten. Anything else raises NotImplementedError.
"""

from pathlib import Path

import numpy as np

ARITHMETICS = ("exact", "vpmaddubsw")
INT16_MAX, INT16_MIN = 32767, -32768


def max_pair_sum(weights_q: np.ndarray, activation_max: int = 255) -> int:
    """The largest |a1 w1 + a2 w2| `vpmaddubsw` can meet for these int8 weights (K along the last axis, pairs of
    adjacent elements) and uint8 activations up to `activation_max`: above 32767 the int16 sum saturates."""
    w = np.abs(weights_q.astype(np.int64))
    if w.shape[-1] % 2:
        w = np.concatenate([w, np.zeros((*w.shape[:-1], 1), dtype=np.int64)], axis=-1)
    pairs = w[..., 0::2] + w[..., 1::2]
    return int(activation_max * pairs.max()) if pairs.size else 0


def integer_matmul(a_q: np.ndarray, b_q: np.ndarray, arithmetic: str) -> tuple[np.ndarray, int]:
    """sum_k a[m, k] * b[n, k] as int64 for raw uint8 `a_q` (M, K) and int8/uint8 `b_q` (N, K), and how many int16
    pair sums saturated. "vpmaddubsw" clamps each adjacent pair's sum to int16 when b is int8 (u8 x s8)."""
    a = a_q.astype(np.int32)
    b = b_q.astype(np.int32)
    if arithmetic == "exact" or b_q.dtype == np.uint8:  # u8 x u8 is widened to int16 first: no saturation
        return (a.astype(np.float64) @ b.T.astype(np.float64)).astype(np.int64), 0
    if arithmetic != "vpmaddubsw":
        raise ValueError(f"unknown arithmetic {arithmetic!r}; use one of {ARITHMETICS}")
    if a.shape[1] % 2:  # odd K: the packed panel ends with a zero
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 0), (0, 1)))
    total = (a.astype(np.float64) @ b.T.astype(np.float64)).astype(np.int64)  # exact; float64 holds it exactly
    # Only pairs whose weights can reach the int16 limit with some uint8 activation need a look: for those, add
    # (saturated - exact) pair sums to the exact total.
    weight_pairs = np.abs(b[:, 0::2]) + np.abs(b[:, 1::2])  # (N, K/2)
    saturated = 0
    for p in np.flatnonzero((255 * weight_pairs > INT16_MAX).any(axis=0)):
        cols = np.flatnonzero(255 * weight_pairs[:, p] > INT16_MAX)
        pair = np.outer(a[:, 2 * p], b[cols, 2 * p]) + np.outer(a[:, 2 * p + 1], b[cols, 2 * p + 1])
        clipped = np.clip(pair, INT16_MIN, INT16_MAX)
        saturated += int(np.count_nonzero(clipped != pair))
        total[:, cols] += clipped - pair
    return total, saturated


def _im2col_nhwc(x_q: np.ndarray, kernel: tuple[int, int], pads: list[int], strides: list[int], pad_value: int):
    """(N, C, H, W) integers -> (N * OH * OW, KH * KW * C) patches, K ordered (kh, kw, c) as in an NHWC conv;
    the border is padded with the input's zero point (the integer that stands for 0.0)."""
    n, c, h, w = x_q.shape
    kh, kw = kernel
    padded = np.pad(x_q, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=pad_value)
    oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x_q.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i : i + strides[0] * oh : strides[0], j : j + strides[1] * ow : strides[1]]
            cols[:, :, :, i, j, :] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, kh * kw * c), (n, oh, ow)


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x / scale) + zero_point.astype(np.float32)  # rint: round half to even, as ONNX specifies
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def _per_axis(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if values.ndim == 0 or ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


class _QDQInterpreter:
    """Evaluates one QDQ graph; `quantized[name]` keeps (integers, scale, zero point) of every QuantizeLinear output
    and quantized initializer, so that Conv/Gemm can multiply the integers as ORT's fused kernels do."""

    def __init__(self, path: Path, arithmetic: str):
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(str(path))
        self.arithmetic = arithmetic
        self.values = {i.name: numpy_helper.to_array(i) for i in self.model.graph.initializer}
        self.dequantized_from: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.saturated = 0
        self.pairs = 0

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        import onnx

        graph = self.model.graph
        self.values[graph.input[0].name] = pixel_values.astype(np.float32)
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            inputs = [self.values[name] if name else None for name in node.input]
            op = getattr(self, f"_op_{node.op_type}", None)
            if op is None:
                raise NotImplementedError(f"the int8 emulation has no {node.op_type} (node {node.name})")
            self.values[node.output[0]] = op(node, inputs, attrs)
        return self.values[graph.output[0].name]

    # ---- quantisation ----
    def _op_QuantizeLinear(self, node, inputs, attrs):  # noqa: N802 (ONNX op names)
        x, scale, zero_point = inputs
        axis = attrs.get("axis", 1)
        return _quantize(x, _per_axis(scale, axis, x.ndim), _per_axis(zero_point, axis, x.ndim))

    def _op_DequantizeLinear(self, node, inputs, attrs):  # noqa: N802
        q, scale, zero_point = inputs
        axis = attrs.get("axis", 1)
        self.dequantized_from[node.output[0]] = (q, scale, zero_point, axis)
        zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float32)
        return ((q.astype(np.float32) - _per_axis(zp, axis, q.ndim)) * _per_axis(scale, axis, q.ndim)).astype(
            np.float32
        )

    # ---- the integer GEMMs ----
    def _integer_operands(self, node):
        """(x_q, x_scale, x_zero_point, w_q, w_scale, w_zero_point) when both inputs come from DequantizeLinear."""
        x, w = (self.dequantized_from.get(name) for name in node.input[:2])
        if x is None or w is None:
            return None
        x_q, x_zp = x[0], x[2]
        if x_q.dtype == np.int8:  # int8 activations: MLAS adds 128 to run its uint8 x int8 kernels (same products)
            x_q, x_zp = (x_q.astype(np.int16) + 128).astype(np.uint8), np.int16(x_zp) + 128
        return x_q, x[1], x_zp, w[0], w[1], w[2]

    def _accumulate(self, a_cols: np.ndarray, w_q: np.ndarray, x_zp: np.ndarray, w_zp: np.ndarray) -> np.ndarray:
        """sum_k (a - za)(w - zw) from the raw-byte product, with MLAS's zero-point corrections."""
        raw, saturated = integer_matmul(a_cols, w_q, self.arithmetic)
        self.saturated += saturated
        self.pairs += a_cols.shape[0] * w_q.shape[0] * ((a_cols.shape[1] + 1) // 2)
        k = a_cols.shape[1]
        za = np.int64(x_zp)
        zw = w_zp.astype(np.int64).reshape(1, -1) if np.ndim(w_zp) else np.int64(w_zp)
        a_sums = a_cols.astype(np.int64).sum(1, keepdims=True)
        w_sums = w_q.astype(np.int64).sum(1).reshape(1, -1)
        return raw - za * w_sums - zw * a_sums + k * za * zw

    def _dequantize_accumulator(self, acc, x_scale, w_scale, bias):
        out = acc.astype(np.float64) * (np.float64(x_scale) * w_scale.astype(np.float64).reshape(1, -1))
        return (out + (0 if bias is None else bias.reshape(1, -1))).astype(np.float32)

    def _op_Conv(self, node, inputs, attrs):  # noqa: N802
        x, w = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        if attrs.get("group", 1) != 1 or x.ndim != 4:
            raise NotImplementedError("the int8 emulation handles 2-D convolutions with group=1 only")
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
        pads, strides = list(attrs.get("pads", [0, 0, 0, 0])), list(attrs.get("strides", [1, 1]))
        operands = self._integer_operands(node)
        if operands is None:  # a float Conv
            cols, (n, oh, ow) = _im2col_nhwc(x, kernel, pads, strides, 0)
            out = cols @ w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1).T + (0 if bias is None else bias)
        else:
            x_q, x_scale, x_zp, w_q, w_scale, w_zp = operands
            cols, (n, oh, ow) = _im2col_nhwc(x_q, kernel, pads, strides, int(x_zp))
            w_rows = w_q.transpose(0, 2, 3, 1).reshape(w_q.shape[0], -1)  # (out, kh * kw * c), same K order
            acc = self._accumulate(cols, w_rows, x_zp, w_zp)
            out = self._dequantize_accumulator(acc, x_scale, np.broadcast_to(w_scale, (w_q.shape[0],)), bias)
        return out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2).astype(np.float32)

    def _op_Gemm(self, node, inputs, attrs):  # noqa: N802
        x, w = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0:
            raise NotImplementedError("the int8 emulation handles Gemm with transB=1, transA=0, alpha=1 only")
        operands = self._integer_operands(node)
        if operands is None:
            return (x @ w.T + (0 if bias is None else bias)).astype(np.float32)
        x_q, x_scale, x_zp, w_q, w_scale, w_zp = operands
        acc = self._accumulate(x_q, w_q, x_zp, w_zp)
        return self._dequantize_accumulator(acc, x_scale, np.broadcast_to(w_scale, (w_q.shape[0],)), bias)

    # ---- float ops between them ----
    def _op_Relu(self, node, inputs, attrs):  # noqa: N802
        return np.maximum(inputs[0], 0)

    def _op_MaxPool(self, node, inputs, attrs):  # noqa: N802
        x = inputs[0]
        kh, kw = attrs["kernel_shape"]
        sh, sw = attrs.get("strides", [kh, kw])
        if any(attrs.get("pads", [0, 0, 0, 0])) or (kh, kw) != (sh, sw):
            raise NotImplementedError("the int8 emulation handles unpadded, non-overlapping MaxPool only")
        n, c, h, w = x.shape
        x = x[:, :, : h // kh * kh, : w // kw * kw]
        return x.reshape(n, c, h // kh, kh, w // kw, kw).max(axis=(3, 5))

    def _op_BatchNormalization(self, node, inputs, attrs):  # noqa: N802
        x, gamma, beta, mean, var = inputs[:5]
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        return ((x - mean.reshape(1, -1, 1, 1)) * scale.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)).astype(
            np.float32
        )

    def _op_Reshape(self, node, inputs, attrs):  # noqa: N802
        return inputs[0].reshape([int(d) for d in inputs[1]])

    def _op_Flatten(self, node, inputs, attrs):  # noqa: N802
        axis = attrs.get("axis", 1)
        return inputs[0].reshape(int(np.prod(inputs[0].shape[:axis])), -1)

    def _op_Transpose(self, node, inputs, attrs):  # noqa: N802
        return inputs[0].transpose(attrs["perm"])


def run_qdq(path: Path, pixel_values: np.ndarray, arithmetic: str = "exact", batch_size: int = 256) -> dict:
    """Logits of a QDQ int8 model for `pixel_values` (N, 1, 28, 28) float32 under `arithmetic` ("exact": what VNNI
    and AMX compute; "vpmaddubsw": AVX2 without VNNI), plus the fraction of int16 pair sums that saturated."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; use one of {ARITHMETICS}")
    interpreter = _QDQInterpreter(Path(path), arithmetic)
    logits = np.concatenate([interpreter.run(pixel_values[i : i + batch_size])
                             for i in range(0, len(pixel_values), batch_size)])  # fmt: skip
    return {
        "logits": logits,
        "saturated_pairs": interpreter.saturated,
        "pairs": interpreter.pairs,
        "saturated_fraction": interpreter.saturated / interpreter.pairs if interpreter.pairs else 0.0,
    }


def weight_pair_bounds(path: Path) -> dict[str, dict]:
    """For every int8 weight tensor of a QDQ model (the quantized initializers feeding a Conv or Gemm): its value
    range and the largest pair sum `vpmaddubsw` can meet with uint8 activations, and whether that fits int16."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_input = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    bounds = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        weights = values.get(dq_input.get(node.input[1], ""))
        if weights is None:
            continue
        rows = weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1) if weights.ndim == 4 else weights
        bound = max_pair_sum(rows) if weights.dtype == np.int8 else None  # u8 x u8 is widened: no int16 pair sum
        bounds[node.name or node.output[0]] = {
            "dtype": str(weights.dtype),
            "min": int(weights.min()),
            "max": int(weights.max()),
            "max_pair_sum": bound,
            "fits_int16": bound is None or bound <= INT16_MAX,
        }
    return bounds


__all__ = ["ARITHMETICS", "integer_matmul", "max_pair_sum", "run_qdq", "weight_pair_bounds"]
