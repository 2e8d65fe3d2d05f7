"""The fast training path: fused C kernels for MiniVision's conv blocks, swapped into a model by `apply_fast_kernels`
(scripts/train.py does it on the fast path). Same parameters, same saved files; only how the work is done changes.
Training-side only: the Hub model code never needs this package.

Read it in the order it runs:

1. capabilities.py — detect: one place reads the CPU's ISA features (/proc/cpuinfo, else
   torch.backends.cpu.get_cpu_capability()), CUDA and MPS. `MINIVISION_ISA_LEVEL=x86-64-v3` makes this CPU look
   AVX2-only.
2. build.py — build: csrc/*.c compiled for the CPU's named ISA level (x86-64-v3, x86-64-v4, x86-64-v4-bf16, ...), cached
   under a key over sources, compiler, flags and the level's features, loaded with ctypes; SIGNATURES mirrors
   csrc/minivision_kernels.h, where every exported C function is declared once.
3. swap.py — choose and swap: bf16 or fp32, and each conv block's kernel path (c-one-pass, c+bmm,
   torch-conv+c-pool-relu, torch), decided once from the capabilities when the model is prepared.
4. modules.py — the swapped-in modules, each holding its path (shown in its repr).
5. functions.py — the torch autograd Functions over the C kernels, and the PyTorch expressions they equal.

The C kernels by family (csrc/): pool_relu.c (max-pool + ReLU), first_block.c (1-channel conv + max-pool + ReLU,
bf16 and fp32), winograd_transforms.c (Winograd F(2x2, 3x3) transforms for the c+bmm path, bf16 and fp32),
winograd4x4_transforms.c (Winograd F(4x4, 3x3) transforms for the fp32 c+bmm path: AVX2-only CPUs),
winograd_avx512bf16.c (the one-pass Winograd block with its own AVX-512 BF16 products); vec.h (vectors at the ISA
level's native width) and winograd_tiles.h hold what they share; build_key.c tells the loader which build a
library file is.
"""

from .build import BuildResult, KernelLibrary, load_kernels
from .capabilities import ISA_LEVELS, Capabilities, detect_capabilities
from .functions import (
    Conv1PoolReLU,
    PoolReLU,
    WinogradConvPoolReLU,
    conv_pool_relu_reference,
    pool_relu_reference,
    winograd_weights,
)
from .modules import FastDropout, FusedConvPoolReLUBlock, FusedMaxPoolReLU, KernelPath
from .swap import FastPathPlan, apply_fast_kernels, choose_block_path, plan_fast_path

__all__ = [
    "ISA_LEVELS",
    "BuildResult",
    "Capabilities",
    "Conv1PoolReLU",
    "FastDropout",
    "FastPathPlan",
    "FusedConvPoolReLUBlock",
    "FusedMaxPoolReLU",
    "KernelLibrary",
    "KernelPath",
    "PoolReLU",
    "WinogradConvPoolReLU",
    "apply_fast_kernels",
    "choose_block_path",
    "conv_pool_relu_reference",
    "detect_capabilities",
    "load_kernels",
    "plan_fast_path",
    "pool_relu_reference",
    "winograd_weights",
]
