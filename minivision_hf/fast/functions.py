"""The torch autograd Functions over the C kernels (one per fused operation, forward and backward), and the PyTorch
expressions each one equals (the references the tests compare against and the modules fall back to).

- `PoolReLU`: relu(max_pool2d(x, 2)) in one pass each way, bf16 or fp32, bit-identical to PyTorch (first-maximum
  ties, NaN). PyTorch's eager max-pool writes int64 indices (as large as a bf16 input), its backward zero-fills and
  scatters the full-size gradient, and ReLU adds two more passes; here the forward writes the pooled map and a code per
  output (which window input won, or "ReLU closed"), the backward writes every input gradient once.
- `Conv1PoolReLU`: the first block, relu(max_pool2d(conv2d(x, w, b, padding=1), 2)) for a 1-channel x, as one direct
  kernel that never writes the full-resolution map. bf16: forward bit-identical to PyTorch under bf16 autocast (but
  for a rare output near zero after cancellation, which can round one bf16 ulp apart where oneDNN sums in another
  order); weight gradients equal to bf16 rounding (summed in fp32). fp32: equal to PyTorch's fp32 to float rounding.
- `WinogradConvPoolReLU`: a 3x3 conv with C_in, C_out multiples of 16 as Winograd F(2x2, 3x3) (16 products per 2x2
  outputs instead of 36), the max-pool and ReLU in its output transform (a 2x2 output tile is one pooling window).
  Two implementations, chosen by the caller: one pass per image with the library's own AVX-512 BF16 products
  (`one_pass=True`), or C transforms around torch.bmm over chunks of images. bf16 numerics, equal to an exact
  (fp64) reference to bf16 rounding; or fp32 throughout (transforms in C, products in fp32 torch.bmm; as F(4x4, 3x3)
  with `tile=4`, 36 products per 4x4 outputs) for CPUs without
  native bf16, equal to the fp64 reference to fp32 rounding.

Every Function takes the `KernelLibrary` to call as an argument: which kernels run is decided by the module that
holds them (modules.py), never here.
"""

import torch
from torch import nn

from .build import KernelLibrary

# pool_relu.c's codes (0..4) in the data's own type, which vectorises best: uint16 bits in an int16 tensor, or fp32
POOL_CODE_DTYPES = {torch.bfloat16: torch.int16, torch.float32: torch.float32}
WINOGRAD_CHUNK = 32  # images per c+bmm pass: the chunk's Winograd-domain arrays (~5 MB at 64 channels) stay in cache
# Winograd F(m x m, 3x3) by output tile size m: U = G w G^T (weights), V = B^T d B (input tiles), y = A^T (U . V) A
# (output tiles); the C kernels hold B and A. F(2x2, 3x3): 16 products per 2x2 outputs (bf16 or fp32); F(4x4, 3x3)
# (interpolation points 0, +-1, +-2, infinity): 36 per 4x4 outputs, fp32 only (winograd4x4_transforms.c).
WINOGRAD_G = {
    2: torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]),
    4: torch.tensor([[1 / 4, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                     [1 / 24, -1 / 12, 1 / 6], [0.0, 0.0, 1.0]]),  # fmt: skip
}


def pool_relu_reference(x: torch.Tensor) -> torch.Tensor:
    """What `PoolReLU` computes, in PyTorch ops: ReLU of a 2x2 stride-2 max-pool."""
    return torch.relu(nn.functional.max_pool2d(x, 2))


def conv_pool_relu_reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """What `Conv1PoolReLU` and `WinogradConvPoolReLU` compute (under bf16 autocast), in PyTorch ops."""
    return pool_relu_reference(conv(x))


def _channels_last_empty(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)


def _sizes(x_shape) -> dict:
    n, c, h, w = x_shape
    return {"images": n, "height": h, "width": w, "channels": c}


def _kernel_name(name: str, dtype: torch.dtype) -> str:
    """The C function for the data type: the bf16 kernels have the plain name, the fp32 ones end in _f32."""
    return name if dtype == torch.bfloat16 else f"{name}_f32"


class PoolReLU(torch.autograd.Function):
    """relu(max_pool2d(x, 2)) for a CPU channels_last (N, C, H, W) bf16 or fp32 x with even H and W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels: KernelLibrary) -> torch.Tensor:
        n, c, h, w = x.shape
        y = _channels_last_empty((n, c, h // 2, w // 2), x.dtype)
        code = _channels_last_empty((n, c, h // 2, w // 2), POOL_CODE_DTYPES[x.dtype])
        name = "mv_pool_relu_forward_bf16" if x.dtype == torch.bfloat16 else "mv_pool_relu_forward_f32"
        kernels.call(name, x=x, y=y, code=code, **_sizes(x.shape))
        ctx.save_for_backward(code)
        ctx.kernels, ctx.input_shape, ctx.input_dtype = kernels, x.shape, x.dtype
        ctx.mark_non_differentiable(code)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (code,) = ctx.saved_tensors
        grad = grad.to(ctx.input_dtype).contiguous(memory_format=torch.channels_last)
        grad_x = _channels_last_empty(ctx.input_shape, ctx.input_dtype)
        name = "mv_pool_relu_backward_bf16" if ctx.input_dtype == torch.bfloat16 else "mv_pool_relu_backward_f32"
        ctx.kernels.call(name, grad_y=grad, code=code, grad_x=grad_x, **_sizes(ctx.input_shape))
        return grad_x, None


class Conv1PoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, w, b, padding=1), 2)) for a 1-channel x, in bf16 autocast numerics (`bf16`) or in
    fp32 (C_out a multiple of 16); gradients for w and b only (the first block's input needs none)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernels: KernelLibrary,
                bf16: bool = True):  # fmt: skip
        n, _, h, w = x.shape
        c = weight.shape[0]
        dtype = torch.bfloat16 if bf16 else torch.float32
        xb = x.to(dtype).contiguous()  # autocast's casts: bf16 input, weights and bias (or fp32 as they are)
        taps = weight.detach().to(dtype).float().reshape(c, 9).t().contiguous()  # (9, C)
        bias_b = bias.detach().to(dtype).float().contiguous()
        y = _channels_last_empty((n, c, h // 2, w // 2), dtype)
        code = _channels_last_empty((n, c, h // 2, w // 2), torch.int16)
        kernels.call(_kernel_name("mv_conv1_pool_relu_forward", dtype), x=xb, taps=taps, bias=bias_b, y=y, code=code,
                     images=n, height=h, width=w, channels=c)  # fmt: skip
        ctx.save_for_backward(xb, code)
        ctx.mark_non_differentiable(code)
        ctx.kernels, ctx.weight_dtype = kernels, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, code = ctx.saved_tensors
        n, c, h2, w2 = grad.shape
        grad = grad.to(xb.dtype).contiguous(memory_format=torch.channels_last)
        grad_taps, grad_bias = torch.empty(9, c), torch.empty(c)
        ctx.kernels.call(_kernel_name("mv_conv1_pool_relu_backward", xb.dtype), x=xb, grad_y=grad, code=code,
                         grad_taps=grad_taps, grad_bias=grad_bias, images=n, height=2 * h2, width=2 * w2,
                         channels=c)  # fmt: skip
        grad_weight = grad_taps.t().reshape(c, 1, 3, 3).to(ctx.weight_dtype)
        return None, grad_weight, grad_bias.to(ctx.weight_dtype), None, None


def winograd_weights(weight: torch.Tensor, tile: int = 2) -> torch.Tensor:
    """U = G w G^T for (C_out, C_in, 3, 3) fp32 weights, as ((tile + 2)^2, C_in, C_out) fp32 (autocast off: exact
    fp32); `tile`: the output tile size m of F(m x m, 3x3), 2 or 4."""
    g = WINOGRAD_G[tile]
    with torch.autocast("cpu", enabled=False):
        u = torch.einsum("xa,oiab,yb->xyio", g, weight, g)
    return u.reshape((tile + 2) ** 2, weight.shape[1], weight.shape[0])


def winograd_weight_grad(du: torch.Tensor, tile: int = 2) -> torch.Tensor:
    """The weight gradient G^T dU G for dU ((tile + 2)^2, C_in, C_out) fp32: (C_out, C_in, 3, 3) fp32."""
    g = WINOGRAD_G[tile]
    with torch.autocast("cpu", enabled=False):  # fp32 transforms, as in the forward
        return torch.einsum("xa,yb,xyio->oiab", g, g, du.unflatten(0, (tile + 2, tile + 2)))


def _bf16_pairs(u: torch.Tensor) -> torch.Tensor:
    """(16, K, N) bf16 -> (16, K/2, N, 2): bf16 pairs along K, the dot-product instructions' operand layout."""
    return u.unflatten(1, (-1, 2)).transpose(2, 3).contiguous()


def _tiles(h: int, w: int, tile: int) -> int:
    """Output tiles per image of F(tile x tile, 3x3) on an h x w map (the last row and column of tiles may run past
    its end: F(4x4) on 14 x 14 covers 16 x 16)."""
    return -(-h // tile) * -(-w // tile)


def _chunk_buffer(images: int, h: int, w: int, channels: int, dtype: torch.dtype = torch.bfloat16, tile: int = 2):
    """One buffer for a chunk's Winograd-domain array; returns k -> its ((tile + 2)^2, k * tiles, channels) view, for
    F(4x4) ((tile + 2)^2, k * tiles + 1, channels): its rows end in a spare tile (winograd4x4_transforms.c)."""
    rows, tiles, spare = (tile + 2) ** 2, _tiles(h, w, tile), int(tile == 4)
    flat = torch.empty(rows * (images * tiles + spare) * channels, dtype=dtype)
    return lambda k: flat[: rows * (k * tiles + spare) * channels].view(rows, -1, channels)


def _winograd_kernel(name: str, dtype: torch.dtype, tile: int) -> str:
    """The C function of a Winograd transform: mv_winograd_<name> for F(2x2) (bf16, or _f32), mv_winograd4x4_<name>_f32
    for F(4x4) (fp32 only)."""
    if tile == 4:
        if dtype != torch.float32:
            raise ValueError("the F(4x4, 3x3) Winograd kernels are fp32 only")
        return f"mv_winograd4x4_{name}_f32"
    return _kernel_name(f"mv_winograd_{name}", dtype)


def winograd_forward(kernels: KernelLibrary, xb: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, one_pass: bool,
                     chunk: int = WINOGRAD_CHUNK, tile: int = 2,
                     keep: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The Winograd block's forward: channels_last x (N, C_in, H, W), Winograd weights u ((tile + 2)^2, C_in, C_out)
    of the same type (bf16, or fp32), fp32 bias -> the pooled map (N, C_out, H/2, W/2) of x's type and its codes
    (which window input won, 4 where ReLU closed). `one_pass` (bf16, F(2x2) only): the library's own AVX-512 BF16
    products; else C transforms around torch.bmm, `chunk` images a pass; `tile`: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3)
    (fp32). `keep` (c+bmm): a list that receives each chunk's input transform V, for `winograd_backward` to reuse."""
    n, c_in, h, w = xb.shape
    c_out, dtype = u.shape[2], xb.dtype
    y = _channels_last_empty((n, c_out, h // 2, w // 2), dtype)
    code = _channels_last_empty((n, c_out, h // 2, w // 2), torch.int16)
    if one_pass:
        kernels.call("mv_winograd_one_pass_forward", x=xb, weight_pairs=_bf16_pairs(u), bias=bias, y=y, code=code,
                     images=n, height=h, width=w, in_channels=c_in, out_channels=c_out)  # fmt: skip
        return y, code
    chunk = min(n, chunk)
    m = _chunk_buffer(chunk, h, w, c_out, dtype, tile)
    v = _chunk_buffer(chunk, h, w, c_in, dtype, tile) if keep is None else None  # kept: a buffer per chunk instead
    input_transform = _winograd_kernel("input_transform", dtype, tile)
    output_transform = _winograd_kernel("output_pool_relu", dtype, tile)
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        vk, mk = (v or _chunk_buffer(k, h, w, c_in, dtype, tile))(k), m(k)
        kernels.call(input_transform, x=xb[i : i + k], v=vk, images=k, height=h, width=w, channels=c_in)
        if keep is not None:
            keep.append(vk)
        torch.bmm(vk, u, out=mk)
        kernels.call(output_transform, m=mk, bias=bias, y=y[i : i + k], code=code[i : i + k],
                     images=k, height=h, width=w, channels=c_out)  # fmt: skip
    return y, code


def winograd_backward(kernels: KernelLibrary, xb: torch.Tensor, u: torch.Tensor, code: torch.Tensor,
                      grad: torch.Tensor, want_x: bool, one_pass: bool, chunk: int = WINOGRAD_CHUNK,
                      tile: int = 2, kept: list | None = None):  # fmt: skip
    """The Winograd block's backward -> (grad x (x's type, channels_last) or None, dU ((tile + 2)^2, C_in, C_out)
    fp32, grad bias fp32); the chunks' input transforms are those the forward `kept` (c+bmm), else recomputed."""
    n, c_in, h, w = xb.shape
    c_out, dtype = u.shape[2], xb.dtype
    grad_bias = torch.zeros(c_out)
    du = torch.zeros(u.shape[0], c_in, c_out)  # fp32 sums
    grad_x = _channels_last_empty(xb.shape, dtype) if want_x else None
    if one_pass:
        kernels.call("mv_winograd_one_pass_backward", x=xb, weight_pairs_t=_bf16_pairs(u.transpose(1, 2)),
                     grad_y=grad, code=code, grad_x=grad_x, grad_u=du, grad_bias=grad_bias, images=n, height=h,
                     width=w, in_channels=c_in, out_channels=c_out)  # fmt: skip
        return grad_x, du, grad_bias
    chunk = min(n, chunk)
    dm, dv = (_chunk_buffer(chunk, h, w, c, dtype, tile) for c in (c_out, c_in))
    v = _chunk_buffer(chunk, h, w, c_in, dtype, tile) if kept is None else None  # recomputed here, or kept
    du_part = torch.empty(u.shape[0], c_in, c_out, dtype=dtype)
    u_t = u.transpose(1, 2).contiguous()
    name = {f: _winograd_kernel(f, dtype, tile)
            for f in ("input_transform", "output_pool_relu_backward", "input_transform_backward")}  # fmt: skip
    for index, i in enumerate(range(0, n, chunk)):
        k = min(chunk, n - i)
        vk, dmk, dvk = kept[index] if v is None else v(k), dm(k), dv(k)
        kernels.call(name["output_pool_relu_backward"], grad_y=grad[i : i + k], code=code[i : i + k], grad_m=dmk,
                     grad_bias=grad_bias, images=k, height=h, width=w, channels=c_out)  # fmt: skip
        if grad_x is not None:
            torch.bmm(dmk, u_t, out=dvk)
            kernels.call(name["input_transform_backward"], grad_v=dvk, grad_x=grad_x[i : i + k], images=k, height=h,
                         width=w, channels=c_in)  # fmt: skip
        if kept is None:
            kernels.call(name["input_transform"], x=xb[i : i + k], v=vk, images=k, height=h, width=w, channels=c_in)
        du += torch.bmm(vk.transpose(1, 2), dmk, out=du_part)
    return grad_x, du, grad_bias


class WinogradConvPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, w, b, padding=1), 2)) for a 3x3 convolution with C_in, C_out multiples of 16:
    Winograd F(2x2, 3x3) (or F(4x4, 3x3): `tile` 4, fp32 only), the pooling and ReLU fused into the output transform.
    In bf16 numerics (`bf16`), the 16 Winograd-domain channel products are bf16 matrix products with fp32 sums: the
    library's own (`one_pass`, the "c-one-pass" path), or torch.bmm over chunks of `chunk` images (the "c+bmm" path);
    in fp32, fp32 torch.bmm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernels: KernelLibrary,
                one_pass: bool, chunk: int = WINOGRAD_CHUNK, bf16: bool = True,
                tile: int = 2) -> torch.Tensor:  # fmt: skip
        dtype = torch.bfloat16 if bf16 else torch.float32
        xb = x.to(dtype).contiguous(memory_format=torch.channels_last)  # autocast's casts (bf16), or fp32 as it is
        u = winograd_weights(weight.detach().to(dtype).float(), tile).to(dtype)
        bias_b = bias.detach().to(dtype).float().contiguous()
        one_pass = one_pass and bf16 and tile == 2  # the one-pass products are bf16 F(2x2) only
        # c+bmm: each chunk's input transform V is kept for the backward (its dU products) rather than recomputed
        kept = None if one_pass else []
        y, code = winograd_forward(kernels, xb, u, bias_b, one_pass, chunk, tile, kept)
        ctx.save_for_backward(xb, u, code, *(kept or []))
        ctx.mark_non_differentiable(code)
        ctx.kernels, ctx.one_pass, ctx.chunk, ctx.tile = kernels, one_pass, chunk, tile
        ctx.input_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, u, code, *kept = ctx.saved_tensors
        grad = grad.to(xb.dtype).contiguous(memory_format=torch.channels_last)
        grad_x, du, grad_bias = winograd_backward(ctx.kernels, xb, u, code, grad, ctx.needs_input_grad[0],
                                                  ctx.one_pass, ctx.chunk, ctx.tile, kept or None)  # fmt: skip
        grad_weight = winograd_weight_grad(du, ctx.tile)
        grad_x = None if grad_x is None else grad_x.to(ctx.input_dtype)
        return (grad_x, grad_weight.to(ctx.weight_dtype).contiguous(), grad_bias.to(ctx.weight_dtype), None, None,
                None, None, None)  # fmt: skip
