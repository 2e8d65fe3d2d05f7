"""The nn.Modules the fast path swaps into a MiniVision model. Each holds the kernel path (and precision) it was given
when the model was prepared (swap.py chooses them from the machine's capabilities) and shows them in its repr; at call
time it only checks that the input is one its kernel takes (CPU, even size; bf16 autocast for the bf16 kernels, none
for the fp32 ones), else it computes the same function with PyTorch's ops.
"""

import enum

import torch
from torch import nn

from .build import KernelLibrary
from .functions import (
    WINOGRAD_CHUNK,
    Conv1PoolReLU,
    PoolReLU,
    WinogradConvPoolReLU,
    pool_relu_reference,
)


class KernelPath(str, enum.Enum):
    """How a conv block's conv + 2x2 max-pool + ReLU run."""

    C_ONE_PASS = "c-one-pass"  # all three in one C kernel (first block: direct conv; Winograd block: own bf16 products)
    C_BMM = "c+bmm"  # Winograd transforms in C, the channel products in torch.bmm (no AVX-512 BF16 in the library)
    TORCH_CONV_C_POOL = "torch-conv+c-pool-relu"  # PyTorch's conv, then the C max-pool + ReLU (fp32 or bf16)
    TORCH = "torch"  # PyTorch's ops throughout (no C library here, or a GPU)

    def __str__(self) -> str:
        return self.value


def same_3x3(conv: nn.Module) -> bool:
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
    """Whether `conv` has the shape the Winograd kernels take: `same_3x3`, C_in and C_out multiples of 16."""
    return same_3x3(conv) and conv.in_channels % 16 == 0 and conv.out_channels % 16 == 0


def direct_conv(conv: nn.Module, precision: str = "bf16") -> bool:
    """Whether `conv` has the shape the first-block kernel takes: `same_3x3` with one input channel (and, in fp32,
    C_out a multiple of 16: the fp32 kernel has only the 16-channel vector loops)."""
    return same_3x3(conv) and conv.in_channels == 1 and (precision == "bf16" or conv.out_channels % 16 == 0)


def pool_relu_applies(x: torch.Tensor) -> bool:
    """Whether the C max-pool + ReLU takes `x`: a CPU channels_last (N, C, H, W) bf16/fp32 tensor, H and W even."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.bfloat16, torch.float32)
        and x.shape[2] % 2 == 0
        and x.shape[3] % 2 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def conv_kernel_applies(x: torch.Tensor, precision: str) -> bool:
    """Whether a conv kernel of `precision` computes what PyTorch would here: a CPU (N, C, H, W) input, H and W even,
    and the autocast state PyTorch's ops would run in. "bf16" kernels reproduce bf16 autocast's numerics, so they need
    it on; "fp32" kernels need an fp32 input and no CPU autocast (inside one, PyTorch's ops run at its precision)."""
    if not (x.device.type == "cpu" and x.dim() == 4 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0):
        return False
    if precision == "bf16":  # autocast casts no float64 tensor: a float64 model computes in float64 inside it
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return bf16 and x.dtype != torch.float64
    return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


class FusedMaxPoolReLU(nn.Module):
    """`relu(max_pool2d(x, 2))`: the C kernel (`PoolReLU`) where given one and the input fits, PyTorch's ops otherwise.
    Bit-identical either way."""

    def __init__(self, kernels: KernelLibrary | None):
        super().__init__()
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None and pool_relu_applies(x):
            return PoolReLU.apply(x, self.kernels)
        return pool_relu_reference(x)

    def describe(self) -> dict:
        """How this module runs, as the run record shows it."""
        return {"path": "c-pool-relu" if self.kernels is not None else str(KernelPath.TORCH)}

    def extra_repr(self) -> str:
        return f"path={self.describe()['path']}"


class FusedConvPoolReLUBlock(nn.Module):
    """A MiniVision conv block (conv -> pool -> act -> norm) whose 3x3 conv, 2x2 max-pool and ReLU run on `path`:

    - C_ONE_PASS: a 1-channel conv as one direct kernel (`Conv1PoolReLU`), a 16k-channel one as Winograd F(2x2, 3x3)
      with the library's own AVX-512 BF16 products (`WinogradConvPoolReLU`, one_pass=True; bf16 only);
    - C_BMM: the Winograd conv with its channel products in torch.bmm (`chunk` images a pass): F(2x2, 3x3) in bf16,
      F(4x4, 3x3) in fp32 (27% fewer products on a 14x14 map; its transforms' rounding stays ~1e-5 relative in fp32,
      too coarse for bf16 storage);
    - TORCH_CONV_C_POOL: PyTorch's conv, then the C max-pool + ReLU; TORCH: PyTorch's ops.

    `precision` is the one the plan trains in: "bf16" kernels (C_ONE_PASS, C_BMM) run inside bf16 autocast on the
    CPU, "fp32" ones on fp32 CPU inputs outside autocast; elsewhere (an fp32 evaluation of a bf16 plan, say) the block
    computes the same function with PyTorch's conv and the C max-pool + ReLU. Holds the block's conv and norm under
    the same names, so the state dict (and every saved file) is unchanged."""

    def __init__(self, block: nn.Module, path: KernelPath, kernels: KernelLibrary | None, chunk: int = WINOGRAD_CHUNK,
                 precision: str = "bf16"):  # fmt: skip
        super().__init__()
        if path is not KernelPath.TORCH and kernels is None:
            raise ValueError(f"kernel path {path} needs the C kernels")
        self.conv, self.norm = block.conv, block.norm
        self.pool, self.act = FusedMaxPoolReLU(None if path is KernelPath.TORCH else kernels), nn.Identity()
        # In the replaced block's mode (train or eval); its conv and norm, held as they are, keep their own flags.
        self.training = self.pool.training = self.act.training = block.training
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
        self.path, self.kernels, self.chunk, self.precision = KernelPath(path), kernels, chunk, precision
        fused = self.path in (KernelPath.C_ONE_PASS, KernelPath.C_BMM)
        self.winograd = fused and winograd_conv(self.conv)
        self.winograd_tile = 4 if self.winograd and precision == "fp32" else 2  # F(m x m, 3x3)'s output tile m
        self.direct = self.path is KernelPath.C_ONE_PASS and direct_conv(self.conv, precision)
        if self.path is KernelPath.C_ONE_PASS and self.winograd and precision == "fp32":
            raise ValueError("the one-pass Winograd kernel is bf16 only: give fp32 Winograd blocks the c+bmm path")
        if fused and not (self.winograd or self.direct):
            raise ValueError(f"kernel path {path} does not take {self.conv}")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x, conv, bf16 = hidden_states, self.conv, self.precision == "bf16"
        applies = conv_kernel_applies(x, self.precision)
        if self.direct and not x.requires_grad and applies:  # no input gradient from this kernel
            pooled = Conv1PoolReLU.apply(x, conv.weight, conv.bias, self.kernels, bf16)
        elif self.winograd and applies:
            # (a model unpickled on a CPU without AVX-512 BF16 holds that CPU's library: the same block as c+bmm)
            one_pass = self.path is KernelPath.C_ONE_PASS and self.kernels.one_pass_winograd
            pooled = WinogradConvPoolReLU.apply(x, conv.weight, conv.bias, self.kernels, one_pass, self.chunk, bf16,
                                                self.winograd_tile)  # fmt: skip
        else:
            pooled = self.act(self.pool(conv(x)))
        return self.norm(pooled)

    def describe(self) -> dict:
        """How this block runs, as the run record shows it: the path and the convolution algorithm."""
        conv = "winograd" if self.winograd else "direct" if self.direct else "torch"
        tile = {"winograd_tile": f"F({self.winograd_tile}x{self.winograd_tile}, 3x3)"} if self.winograd else {}
        return {"path": str(self.path), "conv": conv, "precision": self.precision, **tile}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.describe().items())


class FastDropout(nn.Module):
    """`nn.Dropout(p)` in training: zero each element with probability p, scale the rest by 1 / (1 - p). Drawn with
    `torch.rand` (vectorised) instead of bernoulli_ (per element on bf16): the same distribution, ~2x cheaper a call.
    Any device."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:  # every element dropped, as nn.Dropout(1.0) (no 1 / (1 - p) scale to divide by zero)
            return x * 0.0
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
