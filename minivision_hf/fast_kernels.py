"""The fast training path's kernels, swapped into a MiniVision model by `apply_fast_kernels` (scripts/train.py does it
on the fast path). Same outputs, same parameters, same saved files; only how the work is done changes:

- `FusedConvPoolReLUBlock`: the first block's 1-channel 3x3 conv + 2x2 max-pool + ReLU in one C kernel that never
  writes the full-resolution (N, 32, 28, 28) map; weight gradients summed in registers. Forward bit-identical to
  PyTorch's bf16-autocast conv + max_pool2d + ReLU; gradients equal to bf16 rounding (the kernel sums in fp32).
- `FusedMaxPoolReLU`: the other blocks' max-pool + ReLU in one pass each way. PyTorch's eager max-pool writes int64
  indices (as large as the bf16 input), its backward zero-fills and scatters the full-size gradient, and ReLU adds two
  more passes; here the forward writes the pooled map and a code per output (which of the 4 inputs won, or "ReLU
  closed"), the backward writes every input gradient once. Bit-identical to PyTorch (first-maximum ties, NaN).
- `FastDropout`: dropout from `torch.rand` (vectorised) instead of bernoulli_ (per element on bf16): the same
  distribution, ~2x cheaper per call.

Why: on a CPU this network is memory-bound outside its second convolution; these were a quarter of a training step.
The C kernels (csrc/fused_pool.c, ~200 lines) are compiled once per machine with the system's C compiler (gcc/cc,
-O3 -march=native -fopenmp: the loops run on torch's own OpenMP threads; without OpenMP or -march=native, simpler
flag sets follow) into a cache folder and called through ctypes: no Python headers, no torch extension build.
Without a compiler the blocks fall back to PyTorch's ops and say so once. Training-side only: the Hub model code
never needs this module.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

C_SOURCE = Path(__file__).with_name("csrc") / "fused_pool.c"
DTYPES = {torch.bfloat16: 0, torch.float32: 1}
CODE_DTYPES = {torch.bfloat16: torch.int16, torch.float32: torch.int32}  # same width as the data
_library: ctypes.CDLL | None = None
_build_error: str | None = None
_build_flags: tuple[str, ...] | None = None


def cache_dir() -> Path:
    root = os.environ.get("MINIVISION_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "minivision_hf"


# Tried in order: OpenMP threads where the compiler has it, else one thread; -march=native where it is understood.
BUILD_FLAGS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3",),
)


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use (cached by source hash, compiler, flags and machine); None without a
    C compiler or when no flag set builds (`build_error()` says why)."""
    global _library, _build_error, _build_flags
    if _library is not None or _build_error is not None:
        return _library
    compiler = next((c for c in (os.environ.get("CC"), "gcc", "cc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        _build_error = "no C compiler found (gcc, cc or clang)"
        return None
    source = C_SOURCE.read_text()
    errors = []
    for flags in BUILD_FLAGS:
        try:
            lib = _build(compiler, [*flags, "-shared", "-fPIC"], source)
        except (OSError, subprocess.CalledProcessError) as err:
            errors.append(f"{' '.join(flags)}: {(getattr(err, 'stderr', '') or str(err)).strip()[:300]}")
            continue
        lib.pool_relu.argtypes = [ctypes.c_int] * 2 + [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        lib.pool_relu.restype = ctypes.c_int
        lib.conv_pool_relu.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 7 + [ctypes.c_long] * 4 + [ctypes.c_int]
        lib.conv_pool_relu.restype = ctypes.c_int
        _library, _build_flags = lib, flags
        return lib
    _build_error = f"building the fast kernels with {compiler} failed: " + " | ".join(errors)
    return None


def _build(compiler: str, flags: list[str], source: str) -> ctypes.CDLL:
    key = hashlib.sha256("\n".join([source, compiler, *flags, os.uname().machine]).encode()).hexdigest()[:16]
    target = cache_dir() / f"fused_pool_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, out = Path(tmp) / "fused_pool.c", Path(tmp) / target.name
            src.write_text(source)
            subprocess.run([compiler, *flags, str(src), "-o", str(out)], check=True, capture_output=True, text=True)
            os.replace(out, target)  # atomic: concurrent builders (torchrun ranks) each write a whole file
    return ctypes.CDLL(str(target))


def build_flags() -> tuple[str, ...] | None:
    """The flags the kernels were built with (None when not built)."""
    return _build_flags


def supported(x: torch.Tensor) -> bool:
    """Whether the fused kernel handles `x`: a CPU channels_last (N, C, H, W) bf16/fp32 tensor with even H and W."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in DTYPES
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and library() is not None
    )


def _channels_last_empty(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)


class _PoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = _channels_last_empty((n, c, h // 2, w // 2), x.dtype)
        code = _channels_last_empty((n, c, h // 2, w // 2), CODE_DTYPES[x.dtype])
        lib = library()
        lib.pool_relu(0, DTYPES[x.dtype], x.data_ptr(), None, y.data_ptr(), code.data_ptr(), n * h // 2, w // 2, c,
                      torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(code)
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        ctx.mark_non_differentiable(code)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (code,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = grad.to(ctx.input_dtype).contiguous(memory_format=torch.channels_last)
        grad_x = _channels_last_empty(ctx.input_shape, ctx.input_dtype)
        library().pool_relu(1, DTYPES[ctx.input_dtype], grad.data_ptr(), code.data_ptr(), grad_x.data_ptr(), None,
                            n * h // 2, w // 2, c, torch.get_num_threads())  # fmt: skip
        return grad_x


class _ConvPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, w, b, padding=1), 2)) for 1-channel x in bf16 numerics; gradients for w and b."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        c = weight.shape[0]
        xb = x.to(torch.bfloat16).contiguous()  # autocast's casts: bf16 input, weights and bias
        taps = weight.detach().to(torch.bfloat16).float().reshape(c, 9).t().contiguous()  # (9, C)
        bias_b = bias.detach().to(torch.bfloat16).float().contiguous()
        y = _channels_last_empty((n, c, h // 2, w // 2), torch.bfloat16)
        code = _channels_last_empty((n, c, h // 2, w // 2), torch.int16)
        library().conv_pool_relu(0, xb.data_ptr(), taps.data_ptr(), bias_b.data_ptr(), None, y.data_ptr(),
                                 code.data_ptr(), None, n * h // 2, h, w, c, torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(xb, code)
        ctx.mark_non_differentiable(code)
        ctx.weight_dtype = weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, code = ctx.saved_tensors
        n, c, h2, w2 = grad.shape
        grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dw = torch.empty(10, c)  # 9 tap rows, then the bias row
        library().conv_pool_relu(1, xb.data_ptr(), None, None, grad.data_ptr(), None, code.data_ptr(),
                                 dw.data_ptr(), n * h2, 2 * h2, 2 * w2, c, torch.get_num_threads())  # fmt: skip
        grad_weight = dw[:9].t().reshape(c, 1, 3, 3).to(ctx.weight_dtype)
        return None, grad_weight, dw[9].to(ctx.weight_dtype)


def conv_supported(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether `_ConvPoolReLU` computes `relu(max_pool2d(conv(x), 2))` here: a CPU bf16-autocast forward of a
    1-channel 3x3 stride-1 padding-1 convolution with bias, even H and W, and no gradient wanted for x."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[1] == 1
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and not x.requires_grad
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and conv.in_channels == 1
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
        and conv.padding_mode == "zeros"
        and library() is not None
    )


class FusedConvPoolReLUBlock(nn.Module):
    """A MiniVision conv block (conv -> pool -> act -> norm) whose 1-channel conv, 2x2 max-pool and ReLU run as one
    kernel that never writes the full-resolution map. Holds the block's own modules under the same names, so the
    state dict (and every saved file) is unchanged; falls back to the block's modules where unsupported."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv, self.pool, self.act, self.norm = block.conv, block.pool, block.act, block.norm

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if conv_supported(hidden_states, self.conv):
            pooled = _ConvPoolReLU.apply(hidden_states, self.conv.weight, self.conv.bias)
        else:
            pooled = self.act(self.pool(self.conv(hidden_states)))
        return self.norm(pooled)


def pool_relu_reference(x: torch.Tensor) -> torch.Tensor:
    """What the fused op computes, in PyTorch ops: ReLU of a 2x2 stride-2 max-pool."""
    return torch.relu(nn.functional.max_pool2d(x, 2))


class FusedMaxPoolReLU(nn.Module):
    """`relu(max_pool2d(x, 2))` in one pass each way for channels_last CPU tensors; PyTorch ops otherwise."""

    _warned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if supported(x):
            return _PoolReLU.apply(x)
        if _build_error and not FusedMaxPoolReLU._warned:
            FusedMaxPoolReLU._warned = True
            warnings.warn(f"FusedMaxPoolReLU falls back to PyTorch ops: {_build_error}", stacklevel=2)
        return pool_relu_reference(x)


class FastDropout(nn.Module):
    """`nn.Dropout(p)` in training: zero each element with probability p, scale the rest by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def apply_fast_kernels(model: nn.Module) -> dict:
    """Swap the fast kernels into `model` in place; returns what changed (and whether the C kernels were built)."""
    dropouts = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                dropouts += 1
    return {
        "fused_blocks": fuse_pool_relu(model),
        "fast_dropouts": dropouts,
        "kernels_built": library() is not None,
        "build_flags": " ".join(build_flags() or ()) or None,
        "build_error": build_error(),
    }


def fuse_pool_relu(model: nn.Module) -> int:
    """Give every MiniVision conv block with a 2x2 stride-2 max-pool the fused kernels: a 1-channel first block gets
    conv + pool + ReLU in one (`FusedConvPoolReLUBlock`), the others pool + ReLU (`FusedMaxPoolReLU`, their `act`
    becomes Identity). No parameter changes: the state dict and saved files stay the same. Returns the blocks changed.
    """
    changed = 0
    for parent in list(model.modules()):
        for name, block in parent.named_children():
            pool, act = getattr(block, "pool", None), getattr(block, "act", None)
            if not (isinstance(pool, nn.MaxPool2d) and isinstance(act, nn.ReLU) and _is_2x2(pool)):
                continue
            conv = getattr(block, "conv", None)
            if isinstance(conv, nn.Conv2d) and conv.in_channels == 1 and hasattr(block, "norm"):
                setattr(parent, name, FusedConvPoolReLUBlock(block))
            else:
                block.pool, block.act = FusedMaxPoolReLU(), nn.Identity()
            changed += 1
    return changed


def _is_2x2(pool: nn.MaxPool2d) -> bool:
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    return (
        pair(pool.kernel_size) == (2, 2)
        and pair(pool.stride) == (2, 2)
        and pair(pool.padding) == (0, 0)
        and pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
        and not pool.return_indices
    )


def build_error() -> str | None:
    """Why the kernel could not be built (None when it was, or was not tried yet)."""
    return _build_error


__all__ = [
    "FastDropout",
    "FusedConvPoolReLUBlock",
    "FusedMaxPoolReLU",
    "apply_fast_kernels",
    "build_error",
    "build_flags",
    "conv_supported",
    "fuse_pool_relu",
    "library",
    "pool_relu_reference",
    "supported",
]
