"""What this machine can do, read in one place: the CPU's ISA features, CUDA and MPS. Every choice the fast path makes
(the ISA level its C kernels are built for, bf16 or fp32, each block's kernel path) follows from a `Capabilities`.

The CPU's features come from /proc/cpuinfo (the kernel's names for the cpuid bits: `avx2`, `avx512_bf16`, ...); where
there is none (macOS, Windows) from `torch.backends.cpu.get_cpu_capability()` ("AVX512", "AVX2", ...), which cannot
tell AVX-512 BF16 apart and so never claims it.

On x86 the two sources are also checked against each other (`cpu_features_from`): PyTorch reads the processor's own
CPUID, so where it dispatches to AVX2 (or to no AVX2) on a CPU whose /proc/cpuinfo claims more, the features are capped
at x86-64-v3 (or x86-64-v2). Under an emulator such as `qemu-x86_64 -cpu Haswell` /proc/cpuinfo is the host's, and a
library built from it would stop at its first AVX-512 instruction (SIGILL); `ATEN_CPU_CAPABILITY=avx2` lowers both
alike.

`MINIVISION_ISA_LEVEL=<level>` (a name in `ISA_LEVELS`, e.g. `x86-64-v3`) makes this CPU look like one of that level:
its features are cut down to the level's (never raised above what the CPU has). That is how an AVX-512 machine runs
the AVX2-only choices end to end (fp32, kernels built for x86-64-v3); for PyTorch's own kernels to follow, also set
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`.
"""

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

_X86_64_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"})
_X86_64_V3 = _X86_64_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_64_V4 = _X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

# Named ISA levels the C kernels are built for: name -> (CPU features it needs, /proc/cpuinfo names; compiler flags).
# The x86-64-vN names are the psABI micro-architecture levels (gcc >= 11, clang >= 12); x86-64-v4-bf16 adds the
# AVX-512 BF16 dot products the one-pass Winograd kernels use. Ascending: a CPU gets the last one it fully has.
ISA_LEVELS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "x86-64": (frozenset(), ("-march=x86-64",)),
    "x86-64-v2": (_X86_64_V2, ("-march=x86-64-v2",)),
    "x86-64-v3": (_X86_64_V3, ("-march=x86-64-v3",)),
    "x86-64-v4": (_X86_64_V4, ("-march=x86-64-v4",)),
    "x86-64-v4-bf16": (_X86_64_V4 | {"avx512_bf16"}, ("-march=x86-64-v4", "-mavx512bf16")),
}
X86_MACHINES = ("x86_64", "amd64", "AMD64")

# Features worth recording next to a figure (the rest of /proc/cpuinfo's flags say nothing about these kernels); on ARM
# (its `Features` names, which mean other things on x86: AMD's "sme" is memory encryption): int8 dot products and
# matmul, bf16, SVE, SME.
RECORDED_FEATURES = _X86_64_V4 | {"avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile"}
ARM_RECORDED_FEATURES = frozenset({"asimddp", "i8mm", "bf16", "sve", "sve2", "sme"})

# torch.backends.cpu.get_cpu_capability() -> the features it implies, where /proc/cpuinfo is missing.
_TORCH_CAPABILITY_FEATURES = {"AVX512": _X86_64_V4, "AVX2": _X86_64_V3}
# ... and the ISA level it caps an x86 CPU's features to (its CPUID reading; "AVX512" caps nothing).
_TORCH_CAPABILITY_LEVEL = {"AVX2": "x86-64-v3", "DEFAULT": "x86-64-v2", "NO AVX": "x86-64-v2"}


@dataclass(frozen=True)
class Capabilities:
    """A machine's capabilities as the fast path sees them. Build one by hand to ask what another machine would get
    (tests fake an AVX2-only CPU this way); `detect_capabilities()` reads this one's.

    Args:
        machine (`str`): `platform.machine()`, e.g. "x86_64", "aarch64", "arm64".
        cpu_features (`frozenset[str]`): ISA features by their /proc/cpuinfo names ("avx2", "avx512_bf16", ...).
        cpu_source (`str`): where `cpu_features` came from ("/proc/cpuinfo", "torch.backends.cpu", "faked", ...).
        cuda (`bool`): a CUDA device is available. cuda_bf16 (`bool`): it does bf16 natively (Ampere and newer).
        cuda_device (`str | None`): its name. mps (`bool`): Apple's Metal device is available.
    """

    machine: str
    cpu_features: frozenset[str]
    cpu_source: str = "faked"
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_device: str | None = None
    mps: bool = False

    @property
    def isa_level(self) -> str:
        """The highest named ISA level (`ISA_LEVELS`) whose features this CPU has all of; off x86, the machine name
        (the kernels are then built for the compiler's default target, keyed by the CPU's features)."""
        if self.machine not in X86_MACHINES:
            return self.machine
        return [name for name, (needs, _) in ISA_LEVELS.items() if needs <= self.cpu_features][-1]

    @property
    def cpu_bf16_native(self) -> bool:
        """Whether the CPU computes bf16 in hardware (AVX-512 BF16 or AMX). Without it PyTorch emulates bf16 at about
        1/100 of fp32's speed (a 2048^2 bf16 matmul: ~0.9 GFLOP/s on an AVX2-only EPYC, fp32 ~100)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.cpu_features)

    @property
    def cpu_int8_dot_products(self) -> bool:
        """Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX int8). Without them u8s8
        int8 kernels (ONNX Runtime's default) multiply through 16-bit intermediates that can saturate: issue 15 measured
        the shipped int8 model 0.48 points below fp32 on such a CPU."""
        if self.machine not in X86_MACHINES:
            return "asimddp" in self.cpu_features  # ARM's sdot/udot (ARMv8.2 dot product)
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.cpu_features)

    def bf16_native(self, device: str = "cpu") -> bool:
        """Whether `device` ("cpu", "cuda", "mps") does bf16 natively, i.e. whether bf16 autocast pays there. MPS is
        answered False: bf16 on Apple GPUs is not verified here."""
        kind = torch.device(device).type
        if kind == "cuda":
            return self.cuda and self.cuda_bf16
        return self.cpu_bf16_native if kind == "cpu" else False

    def recorded_features(self) -> list[str]:
        """The CPU features worth recording next to a figure, sorted: x86's or ARM's (RECORDED_FEATURES,
        ARM_RECORDED_FEATURES)."""
        wanted = RECORDED_FEATURES if self.machine in X86_MACHINES else ARM_RECORDED_FEATURES
        return sorted(self.cpu_features & wanted)

    def as_record(self) -> dict:
        """The capabilities as a run record stores them (only the features that matter to these kernels)."""
        return {
            "machine": self.machine,
            "isa_level": self.isa_level,
            "cpu_features": self.recorded_features(),
            "cpu_source": self.cpu_source,
            "cpu_bf16_native": self.cpu_bf16_native,
            "cpu_int8_dot_products": self.cpu_int8_dot_products,
            "cuda": self.cuda,
            "cuda_bf16": self.cuda_bf16,
            "cuda_device": self.cuda_device,
            "mps": self.mps,
        }


def read_cpu_features(cpuinfo: str) -> frozenset[str]:
    """The ISA feature names in a /proc/cpuinfo text (x86's `flags` line, ARM's `Features` line; the first CPU's)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_features_from(cpuinfo: str | None, torch_capability: str, machine: str,
                      aten_capability: str | None = None) -> tuple[frozenset[str], str]:  # fmt: skip
    """(features, where they came from) for a CPU: /proc/cpuinfo's text (None where there is none), else what
    PyTorch's dispatch level implies. On x86 PyTorch's level (read from the processor's CPUID, or lowered by
    ATEN_CPU_CAPABILITY, given as `aten_capability`) caps what /proc/cpuinfo lists where that text claims a higher
    level: under an emulator the text is the host's, and kernels built from it would stop at their first instruction
    the emulated CPU lacks. A CPU whose text agrees keeps every feature it lists."""
    features = read_cpu_features(cpuinfo) if cpuinfo else frozenset()
    if not features:
        return _TORCH_CAPABILITY_FEATURES.get(torch_capability, frozenset()), f"torch.backends.cpu ({torch_capability})"
    source, level = "/proc/cpuinfo", _TORCH_CAPABILITY_LEVEL.get(torch_capability)
    if machine in X86_MACHINES and level is not None:
        names = list(ISA_LEVELS)
        if names.index(Capabilities(machine, features).isa_level) > names.index(level):
            why = f"ATEN_CPU_CAPABILITY={aten_capability}" if aten_capability else "its CPUID reading"
            features = limit_to_level(features, level)  # the rest of that text cannot be trusted either
            source += f", capped to {level}: PyTorch dispatches to {torch_capability} ({why})"
    return features, source


def limit_to_level(features: frozenset[str], level: str) -> frozenset[str]:
    """`features` cut down to the named ISA level's (what a CPU of exactly that level shows): the simulation
    MINIVISION_ISA_LEVEL asks for. Never adds a feature the CPU lacks."""
    if level not in ISA_LEVELS:
        raise ValueError(f"MINIVISION_ISA_LEVEL={level!r}: not one of {', '.join(ISA_LEVELS)}")
    return features & ISA_LEVELS[level][0]


@functools.cache
def detect_capabilities() -> Capabilities:
    """This machine's capabilities (read once per process). Honours MINIVISION_ISA_LEVEL (see the module docstring)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # none (macOS, Windows), or not readable (a sandbox): PyTorch's reading
        cpuinfo = None
    features, source = cpu_features_from(cpuinfo, torch.backends.cpu.get_cpu_capability(), platform.machine(),
                                         os.environ.get("ATEN_CPU_CAPABILITY"))  # fmt: skip
    level = os.environ.get("MINIVISION_ISA_LEVEL")
    if level:
        features, source = limit_to_level(features, level), f"{source}, limited to {level} by MINIVISION_ISA_LEVEL"
    cuda = torch.cuda.is_available()
    return Capabilities(
        machine=platform.machine(),
        cpu_features=features,
        cpu_source=source,
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
        mps=torch.backends.mps.is_available(),
    )
