"""The module swap: decide once, from the machine's capabilities, how each block of a MiniVision model will run
(`plan_fast_path`, `choose_block_path`), then swap the fast modules in (`apply_fast_kernels`). The choices:

- precision: bf16 only where the training device does bf16 natively (AVX-512 BF16 / AMX CPUs, CUDA bf16); on an
  AVX2-only CPU bf16 is emulated (~100x slower than fp32), so the plan is fp32;
- kernels: the C library built for the CPU's ISA level (build.py); none on a GPU (PyTorch's ops run there);
- per conv block: the first block's 1-channel conv as one C pass (bf16 or fp32); the 16k-channel conv as Winograd:
  in bf16, in one C pass where the library has the AVX-512 BF16 products, else C transforms + torch.bmm (bf16
  products); in fp32 (AVX2-only CPUs, or bf16 turned off), F(4x4, 3x3) C transforms + fp32 torch.bmm; otherwise
  PyTorch's conv and the C max-pool + ReLU (any precision).
"""

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .build import BuildResult, load_kernels
from .capabilities import Capabilities, detect_capabilities
from .modules import FastDropout, FusedConvPoolReLUBlock, FusedMaxPoolReLU, KernelPath, direct_conv, winograd_conv


@dataclass(frozen=True)
class FastPathPlan:
    """Everything the per-block choice depends on, fixed when the model is prepared."""

    capabilities: Capabilities
    device: str  # the device type the model will train on: "cpu", "cuda", "mps"
    precision: str  # "bf16" (autocast) or "fp32"
    build: BuildResult  # the C kernels (library None on a GPU, without a compiler, or when nothing built)
    winograd: bool  # the 16k-channel convs may run as Winograd


def plan_fast_path(capabilities: Capabilities | None = None, device: str = "cpu", bf16: bool | None = None,
                   winograd: bool = True, build: BuildResult | None = None) -> FastPathPlan:  # fmt: skip
    """The plan for training on `device` on a machine with `capabilities` (default: this one's). `bf16`: whether the
    training loop runs under bf16 autocast (default: where the device does bf16 natively). `build`: the CPU kernels
    (default: built for `capabilities`; tests pass this machine's library to plan for a faked CPU without building
    one for it, which this CPU might not be able to run)."""
    capabilities = capabilities or detect_capabilities()
    kind = torch.device(device).type
    if bf16 is None:
        bf16 = capabilities.bf16_native(kind)
    if kind == "cpu":
        build = build or load_kernels(capabilities)
    else:
        build = BuildResult(None, error=f"the C kernels are CPU-only: on {kind} the blocks run PyTorch's ops")
    return FastPathPlan(capabilities, kind, "bf16" if bf16 else "fp32", build, winograd)


def choose_block_path(conv: nn.Module, plan: FastPathPlan) -> KernelPath:
    """The kernel path for a conv block whose convolution is `conv`, under `plan` (see the module docstring)."""
    library = plan.build.library
    if library is None:
        return KernelPath.TORCH
    if direct_conv(conv, plan.precision):
        return KernelPath.C_ONE_PASS
    if plan.winograd and winograd_conv(conv):
        if plan.precision == "fp32":
            return KernelPath.C_BMM
        if plan.capabilities.cpu_bf16_native:
            return KernelPath.C_ONE_PASS if library.one_pass_winograd else KernelPath.C_BMM
    return KernelPath.TORCH_CONV_C_POOL


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


def swap_blocks(model: nn.Module, plan: FastPathPlan) -> dict[str, FusedConvPoolReLUBlock | FusedMaxPoolReLU]:
    """Give every block with a 2x2 stride-2 max-pool followed by ReLU its fused module: conv blocks (conv, pool, act,
    norm) become `FusedConvPoolReLUBlock` on their chosen path; other such blocks get `FusedMaxPoolReLU` as their pool
    (their act becomes Identity). No parameter changes: the state dict and saved files stay the same; each new module
    takes the training / eval mode of the module it replaces. Blocks swapped before (a second call) are swapped again,
    on the paths this plan chooses. Returns the fused modules by the swapped block's qualified name."""
    swapped = {}
    for parent_name, parent in list(model.named_modules()):
        for name, block in parent.named_children():
            pool, act = getattr(block, "pool", None), getattr(block, "act", None)
            again = isinstance(pool, FusedMaxPoolReLU) and isinstance(act, nn.Identity)
            if not (again or isinstance(pool, nn.MaxPool2d) and isinstance(act, nn.ReLU) and _is_2x2(pool)):
                continue
            qualified = f"{parent_name}.{name}" if parent_name else name
            if isinstance(getattr(block, "conv", None), nn.Conv2d) and hasattr(block, "norm"):
                path = choose_block_path(block.conv, plan)
                fused = FusedConvPoolReLUBlock(block, path, plan.build.library, precision=plan.precision)
                setattr(parent, name, fused)
            else:
                fused = FusedMaxPoolReLU(plan.build.library)
                fused.training = pool.training
                block.pool, block.act = fused, nn.Identity()
            swapped[qualified] = fused
    return swapped


def swap_dropouts(model: nn.Module) -> int:
    """Replace every nn.Dropout with `FastDropout` (same p, same training / eval mode: a dropout swapped into an
    evaluating model stays off); returns how many the model then has (those of an earlier call counted too)."""
    count = sum(isinstance(m, FastDropout) for m in model.modules())
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                dropout = FastDropout(child.p)
                dropout.training = child.training
                setattr(parent, name, dropout)
                count += 1
    return count


def apply_fast_kernels(model: nn.Module, winograd: bool = True, *, device: str | None = None, bf16: bool | None = None,
                       capabilities: Capabilities | None = None) -> dict:  # fmt: skip
    """Prepare `model` for the fast training path in place: choose each block's kernel path once (from
    `capabilities`, default this machine's; for training on `device`, default the model's; under bf16 autocast when
    `bf16`, default where the device does bf16 natively) and swap the fused modules and FastDropout in.

    Returns the report a run record stores: the plan (device, precision, the library's ISA level and flags, the
    capabilities it followed from), each block's path, and what changed."""
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device.type  # a model without parameters: the CPU
    plan = plan_fast_path(capabilities, device, bf16, winograd)
    if plan.device == "cpu" and plan.build.library is None:
        warnings.warn(f"the fast path runs PyTorch's ops: {plan.build.error}", stacklevel=2)
    dropouts = swap_dropouts(model)
    swapped = swap_blocks(model, plan)
    blocks = {name: module.describe() for name, module in swapped.items()}
    return {
        "device": plan.device,
        "precision": plan.precision,
        "blocks": blocks,
        "fused_blocks": len(swapped),
        "winograd_blocks": sum(getattr(m, "winograd", False) for m in swapped.values()),
        "fast_dropouts": dropouts,
        "kernels_built": plan.build.library is not None,
        "kernel_isa_level": plan.build.target.level if plan.build.target else None,
        "build_flags": plan.build.flags,
        "build_error": plan.build.error,
        "build_attempts_failed": list(plan.build.attempts),  # targets tried before the one built (e.g. no OpenMP)
        "capabilities": plan.capabilities.as_record(),
    }
