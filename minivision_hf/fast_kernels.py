"""The fast training path's kernels, swapped into a MiniVision model by `apply_fast_kernels` (scripts/train.py does it
on the fast path). Same parameters, same saved files; only how the work is done changes:

- `FusedConvPoolReLUBlock` runs a block's 3x3 conv + 2x2 max-pool + ReLU fused:
  - a 1-channel conv (the first block) as one direct C kernel that never writes the full-resolution (N, 32, 28, 28)
    map, weight gradients summed in registers. Forward bit-identical to PyTorch's bf16-autocast conv + max_pool2d +
    ReLU; gradients equal to bf16 rounding (the kernel sums in fp32).
  - a conv with 16k input and output channels (the second block) as Winograd F(2x2, 3x3): 16 products per 2x2
    outputs instead of 36. Each 2x2 output tile is exactly one pooling window, so max-pool and ReLU happen in the
    output transform and the full-resolution map is never written. Where the compiler targets AVX-512 BF16, each
    image goes through in one pass on its thread (`winograd_fused`): tile transforms, the 16 channel-mixing products
    as bf16 dot products with fp32 sums (kept in fp32 until the output transform), all in cache. Elsewhere the C
    kernels do the transforms and torch.bmm the products, in chunks of WINOGRAD_CHUNK images. bf16 numerics, not
    bit-identical to oneDNN's direct conv: within bf16 rounding of an exact (fp64) reference, tested.
    `winograd=False` keeps PyTorch's conv there.
- `FusedMaxPoolReLU`: max-pool + ReLU in one pass each way (the fallback for convs the kernels do not take). PyTorch's
  eager max-pool writes int64 indices (as large as the bf16 input), its backward zero-fills and scatters the full-size
  gradient, and ReLU adds two more passes; here the forward writes the pooled map and a code per output (which of the
  4 inputs won, or "ReLU closed"), the backward writes every input gradient once. Bit-identical to PyTorch
  (first-maximum ties, NaN).
- `FastDropout`: dropout from `torch.rand` (vectorised) instead of bernoulli_ (per element on bf16): the same
  distribution, ~2x cheaper per call.

The C kernels (csrc/fused_pool.c) are compiled once per machine with the system's C compiler (gcc/cc, -O3
-march=native -fopenmp: the loops run on torch's own OpenMP threads; without OpenMP or -march=native, simpler flag
sets follow) into a cache folder and called through ctypes: no Python headers, no torch extension build. Without a
compiler the blocks fall back to PyTorch's ops and say so once. Training-side only: the Hub model code never needs
this module.
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
    ("-O3", "-fopenmp"),
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
        lib.winograd.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_long] * 4 + [ctypes.c_int]
        lib.winograd.restype = ctypes.c_int
        lib.winograd_fused.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 9 + [ctypes.c_long] * 5 + [ctypes.c_int]
        lib.winograd_fused.restype = ctypes.c_int
        lib.winograd_fused_built.restype = ctypes.c_int
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


# Winograd F(2x2, 3x3): U = G w G^T (weights), V = B^T d B (input tiles), y = A^T (U . V) A (output tiles).
WINOGRAD_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """U = G w G^T for (C_out, C_in, 3, 3) fp32 weights, as (16, C_in, C_out) fp32 (autocast off: exact fp32)."""
    with torch.autocast("cpu", enabled=False):
        u = torch.einsum("xa,oiab,yb->xyio", WINOGRAD_G, weight, WINOGRAD_G)
    return u.reshape(16, weight.shape[1], weight.shape[0])


def _winograd(kind: int, a, b, c, d, dbias, n: int, h: int, w: int, channels: int) -> None:
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    _check(library().winograd(kind, ptr(a), ptr(b), ptr(c), ptr(d), ptr(dbias), n, h, w, channels,
                              torch.get_num_threads()))  # fmt: skip


def _check(status: int) -> None:
    if status:
        reason = {1: "out of memory", 2: "unsupported shape"}.get(status, f"status {status}")
        raise RuntimeError(f"Winograd kernel failed: {reason}")


WINOGRAD_FUSED = True  # the one-pass kernels where built (AVX-512 BF16); False: transforms + torch.bmm
WINOGRAD_CHUNK = 32  # images per pass: the chunk's Winograd-domain arrays (~5 MB at 64 channels) stay in cache


def _chunk_buffer(images: int, h: int, w: int, channels: int):
    """One buffer for a chunk's Winograd-domain array; returns k -> its (16, k * H/2 * W/2, channels) view."""
    flat = torch.empty(16 * images * (h // 2) * (w // 2) * channels, dtype=torch.bfloat16)
    return lambda k: flat[: 16 * k * (h // 2) * (w // 2) * channels].view(16, -1, channels)


def winograd_fused() -> bool:
    """Whether the one-pass Winograd kernels (own AVX-512 BF16 products, fp32 until the output transform) were built;
    else the Winograd blocks use the transforms + torch.bmm path. WINOGRAD_FUSED = False forces the latter."""
    return WINOGRAD_FUSED and library() is not None and bool(library().winograd_fused_built())


def _pairs(u: torch.Tensor) -> torch.Tensor:
    """(16, K, N) bf16 -> (16, K/2, N, 2): bf16 pairs along K, the dot-product instructions' operand layout."""
    return u.unflatten(1, (-1, 2)).transpose(2, 3).contiguous()


def winograd_forward(xb: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward: bf16 channels_last x (N, C_in, H, W), Winograd weights u (16, C_in, C_out) bf16, fp32 bias
    -> the pooled map (N, C_out, H/2, W/2) bf16 and its codes (which window input won, 4 where ReLU closed)."""
    n, c_in, h, w = xb.shape
    c_out = u.shape[2]
    y = _channels_last_empty((n, c_out, h // 2, w // 2), torch.bfloat16)
    code = _channels_last_empty((n, c_out, h // 2, w // 2), torch.int16)
    if winograd_fused():
        packed = _pairs(u)  # held here: the kernel reads it through a raw pointer
        _check(library().winograd_fused(0, xb.data_ptr(), packed.data_ptr(), bias.data_ptr(), None, None,
                                        y.data_ptr(), code.data_ptr(), None, None, n, h, w, c_in, c_out,
                                        torch.get_num_threads()))  # fmt: skip
        return y, code
    chunk = min(n, WINOGRAD_CHUNK)
    v, m = _chunk_buffer(chunk, h, w, c_in), _chunk_buffer(chunk, h, w, c_out)
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        vk, mk = v(k), m(k)
        _winograd(0, xb[i : i + k], None, vk, None, None, k, h, w, c_in)
        torch.bmm(vk, u, out=mk)
        _winograd(1, mk, bias, y[i : i + k], code[i : i + k], None, k, h, w, c_out)
    return y, code


class _WinogradConvPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, w, b, padding=1), 2)) in bf16 numerics for a 3x3 convolution with C_in, C_out
    multiples of 16: Winograd F(2x2, 3x3), the pooling and ReLU fused into the output transform (a 2x2 output tile is
    one pooling window). The 16 Winograd-domain channel products are bf16 matrix products with fp32 sums: the
    one-pass kernels' own where built (`winograd_fused`), else torch.bmm over chunks of WINOGRAD_CHUNK images. Either
    way the transformed arrays stay in cache, and the backward recomputes the input transform instead of keeping it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)  # autocast's casts
        u = _winograd_weights(weight.detach().to(torch.bfloat16).float()).to(torch.bfloat16)
        y, code = winograd_forward(xb, u, bias.detach().to(torch.bfloat16).float().contiguous())
        ctx.save_for_backward(xb, u, code)
        ctx.mark_non_differentiable(code)
        ctx.input_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, u, code = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        grad_x, du, grad_bias = winograd_backward(xb, u, code, grad, ctx.needs_input_grad[0])
        with torch.autocast("cpu", enabled=False):  # fp32 transforms, as in the forward
            grad_weight = torch.einsum("xa,yb,xyio->oiab", WINOGRAD_G, WINOGRAD_G, du.unflatten(0, (4, 4)))
        grad_x = None if grad_x is None else grad_x.to(ctx.input_dtype)
        return grad_x, grad_weight.to(ctx.weight_dtype).contiguous(), grad_bias.to(ctx.weight_dtype)


def winograd_backward(xb: torch.Tensor, u: torch.Tensor, code: torch.Tensor, grad: torch.Tensor, want_x: bool):
    """The fused backward: -> (grad x (bf16, channels_last) or None, dU (16, C_in, C_out) fp32, grad bias fp32)."""
    n, c_in, h, w = xb.shape
    c_out = u.shape[2]
    grad_bias = torch.zeros(c_out)
    du = torch.zeros(16, c_in, c_out)  # fp32 sums
    grad_x = _channels_last_empty(xb.shape, torch.bfloat16) if want_x else None
    if winograd_fused():
        packed = _pairs(u.transpose(1, 2))  # held here: the kernel reads it through a raw pointer
        _check(library().winograd_fused(1, xb.data_ptr(), packed.data_ptr(), None,
                                        grad.data_ptr(), code.data_ptr(), None if grad_x is None else grad_x.data_ptr(),
                                        None, du.data_ptr(), grad_bias.data_ptr(), n, h, w, c_in, c_out,
                                        torch.get_num_threads()))  # fmt: skip
        return grad_x, du, grad_bias
    chunk = min(n, WINOGRAD_CHUNK)
    v, dm, dv = _chunk_buffer(chunk, h, w, c_in), _chunk_buffer(chunk, h, w, c_out), _chunk_buffer(chunk, h, w, c_in)
    du_part = torch.empty(16, c_in, c_out, dtype=torch.bfloat16)
    u_t = u.transpose(1, 2).contiguous()
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        vk, dmk, dvk = v(k), dm(k), dv(k)
        _winograd(2, grad[i : i + k], code[i : i + k], dmk, None, grad_bias, k, h, w, c_out)
        if grad_x is not None:
            torch.bmm(dmk, u_t, out=dvk)
            _winograd(3, dvk, None, grad_x[i : i + k], None, None, k, h, w, c_in)
        _winograd(0, xb[i : i + k], None, vk, None, None, k, h, w, c_in)
        du += torch.bmm(vk.transpose(1, 2), dmk, out=du_part)
    return grad_x, du, grad_bias


def winograd_supported(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether `_WinogradConvPoolReLU` computes `relu(max_pool2d(conv(x), 2))` here: a CPU bf16-autocast forward of a
    3x3 stride-1 padding-1 convolution with bias, C_in and C_out multiples of 16, even H and W."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and winograd_conv(conv)
        and library() is not None
    )


def _same_3x3(conv: nn.Module) -> bool:
    """A 3x3, stride-1, zero-padding-1 convolution with bias: what every fused conv kernel here computes."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
        and conv.padding_mode == "zeros"
    )


def winograd_conv(conv: nn.Module) -> bool:
    """Whether `conv` has the shape the Winograd kernel takes: 3x3, stride 1, padding 1, with bias, C_in and C_out
    multiples of 16."""
    return _same_3x3(conv) and conv.in_channels % 16 == 0 and conv.out_channels % 16 == 0


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
        and _same_3x3(conv)
        and library() is not None
    )


class FusedConvPoolReLUBlock(nn.Module):
    """A MiniVision conv block (conv -> pool -> act -> norm) whose 3x3 conv, 2x2 max-pool and ReLU run fused: a
    1-channel conv as one direct kernel that never writes the full-resolution map (`_ConvPoolReLU`), a wider one as
    Winograd F(2x2, 3x3) with the pooling and ReLU in its output transform (`_WinogradConvPoolReLU`, when `winograd`),
    else PyTorch's conv and the fused pool + ReLU. Holds the block's conv and norm under the same names, so the state
    dict (and every saved file) is unchanged."""

    def __init__(self, block: nn.Module, winograd: bool = True):
        super().__init__()
        self.conv, self.norm = block.conv, block.norm
        self.pool, self.act = FusedMaxPoolReLU(), nn.Identity()
        self.winograd = winograd

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if conv_supported(hidden_states, self.conv):
            pooled = _ConvPoolReLU.apply(hidden_states, self.conv.weight, self.conv.bias)
        elif self.winograd and winograd_supported(hidden_states, self.conv):
            pooled = _WinogradConvPoolReLU.apply(hidden_states, self.conv.weight, self.conv.bias)
        else:
            pooled = self.act(self.pool(self.conv(hidden_states)))
        return self.norm(pooled)

    def extra_repr(self) -> str:
        return f"winograd={self.winograd}"


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


def apply_fast_kernels(model: nn.Module, winograd: bool = True) -> dict:
    """Swap the fast kernels into `model` in place; returns what changed (and whether the C kernels were built)."""
    dropouts = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                dropouts += 1
    fused = fuse_pool_relu(model, winograd=winograd)
    blocks = [m for m in model.modules() if isinstance(m, FusedConvPoolReLUBlock)]
    return {
        "fused_blocks": fused,
        "winograd_blocks": sum(b.winograd and winograd_conv(b.conv) for b in blocks),
        "fast_dropouts": dropouts,
        "kernels_built": library() is not None,
        "build_flags": " ".join(build_flags() or ()) or None,
        "build_error": build_error(),
    }


def fuse_pool_relu(model: nn.Module, winograd: bool = True) -> int:
    """Give every MiniVision conv block with a 2x2 stride-2 max-pool the fused kernels (`FusedConvPoolReLUBlock`:
    conv + pool + ReLU in one, the wider convolutions as Winograd when `winograd`); other blocks with such a pool get
    the fused pool + ReLU (`FusedMaxPoolReLU`, their `act` becomes Identity). No parameter changes: the state dict and
    saved files stay the same. Returns the blocks changed."""
    changed = 0
    for parent in list(model.modules()):
        for name, block in parent.named_children():
            pool, act = getattr(block, "pool", None), getattr(block, "act", None)
            if not (isinstance(pool, nn.MaxPool2d) and isinstance(act, nn.ReLU) and _is_2x2(pool)):
                continue
            if isinstance(getattr(block, "conv", None), nn.Conv2d) and hasattr(block, "norm"):
                setattr(parent, name, FusedConvPoolReLUBlock(block, winograd=winograd))
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
    "winograd_conv",
    "winograd_supported",
]
