"""The fast path (minivision_hf/fast): capability detection, the C build and its cache key, the header/ctypes signature
mirror, the per-block kernel choice (with faked capability sets: AVX2-only, AVX-512 BF16, CUDA, MPS), and the kernels
themselves: max-pool + ReLU (bit-identical to PyTorch, values and gradients), the first block's conv + max-pool + ReLU
(bit-identical forward under bf16 autocast, gradients to bf16 rounding) and the Winograd block (bf16 numerics: equal to
an fp64 reference to bf16 rounding), on both Winograd paths.

Simulating another CPU: build a `Capabilities` by hand (AVX2_ONLY below) to test what it would choose, and run a fresh
process with MINIVISION_ISA_LEVEL=x86-64-v3 to build and run the kernels as an AVX2-only CPU gets them
(test_x86_64_v3_build_runs_the_avx2_choices).
"""

import copy
import functools
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import minivision_hf as mv
from minivision_hf import fast
from minivision_hf.fast import build as fast_build
from minivision_hf.fast.capabilities import ISA_LEVELS, limit_to_level, read_cpu_features
from minivision_hf.fast.modules import pool_relu_applies

CAPS = fast.detect_capabilities()
BUILD = fast.load_kernels(CAPS)
LIB = BUILD.library
needs_kernels = pytest.mark.skipif(LIB is None, reason=f"no C kernels here: {BUILD.error}")
needs_one_pass = pytest.mark.skipif(
    LIB is None or not LIB.one_pass_winograd, reason="the one-pass Winograd kernels need a CPU with AVX-512 BF16"
)
x86 = pytest.mark.skipif(CAPS.machine not in ("x86_64", "AMD64"), reason="x86-64 ISA levels")

# Faked machines. AVX2_ONLY is the AMD EPYC of issue 15 (AVX2, FMA, no AVX-512, no bf16, no VNNI).
AVX2_ONLY = fast.Capabilities("x86_64", ISA_LEVELS["x86-64-v3"][0] | {"sse", "sse2"}, "faked AVX2-only EPYC")
AVX512 = fast.Capabilities("x86_64", ISA_LEVELS["x86-64-v4"][0] | {"sse", "sse2", "avx512_vnni"}, "faked AVX-512")
AVX512_BF16 = fast.Capabilities("x86_64", ISA_LEVELS["x86-64-v4-bf16"][0] | {"sse", "sse2"}, "faked AVX-512 BF16")
AMX = fast.Capabilities("x86_64", ISA_LEVELS["x86-64-v4"][0] | {"amx_bf16", "amx_tile"}, "faked Sapphire Rapids")
CUDA_GPU = fast.Capabilities("x86_64", AVX2_ONLY.cpu_features, "faked", cuda=True, cuda_bf16=True, cuda_device="GPU")
MAC = fast.Capabilities("arm64", frozenset(), "faked", mps=True)
GRAVITON = fast.Capabilities("aarch64", frozenset({"fp", "asimd", "bf16", "sve"}), "faked Graviton 3")  # ARM bf16


def _channels_last(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0))


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    """MNIST-like normalised inputs (constant background), channels_last."""
    g = torch.Generator().manual_seed(seed)
    ink = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float() * torch.rand(n, 1, 28, 28, generator=g)
    return ((ink - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)


def _model(dropout: float | None = None) -> mv.MiniVisionForImageClassification:
    torch.manual_seed(0)
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)
    if dropout is not None:
        model.classifier[2].p = dropout
    return model


def _paths(report: dict) -> list[str]:
    return [block["path"] for block in report["blocks"].values()]


# ---- detect -----------------------------------------------------------------------------------------------------


def test_cpu_features_are_read_from_cpuinfo_text():
    x86_text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    arm_text = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"
    assert read_cpu_features(x86_text) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert read_cpu_features(arm_text) == {"fp", "asimd", "bf16", "sve"}
    assert read_cpu_features("") == frozenset()


def test_isa_level_and_bf16_follow_the_features():
    assert AVX2_ONLY.isa_level == "x86-64-v3" and not AVX2_ONLY.cpu_bf16_native
    assert not AVX2_ONLY.cpu_int8_dot_products and AVX512.cpu_int8_dot_products
    assert AVX512.isa_level == "x86-64-v4" and not AVX512.cpu_bf16_native
    assert AVX512_BF16.isa_level == "x86-64-v4-bf16" and AVX512_BF16.cpu_bf16_native
    assert AMX.isa_level == "x86-64-v4" and AMX.cpu_bf16_native  # AMX bf16, no avx512_bf16 flag: no one-pass build
    assert fast.Capabilities("x86_64", frozenset({"sse2"})).isa_level == "x86-64"
    assert MAC.isa_level == "arm64" and not MAC.bf16_native("mps") and not MAC.bf16_native("cpu")
    assert CUDA_GPU.bf16_native("cuda") and not CUDA_GPU.bf16_native("cpu")
    record = AVX512_BF16.as_record()
    assert record["isa_level"] == "x86-64-v4-bf16" and "avx512_bf16" in record["cpu_features"]
    assert "sse" not in record["cpu_features"]  # only the features these kernels care about are recorded


def test_this_machine_is_detected_once():
    assert fast.detect_capabilities() is CAPS
    assert CAPS.isa_level in ISA_LEVELS or CAPS.machine not in ("x86_64", "AMD64")
    assert CAPS.cuda == torch.cuda.is_available()
    if os.path.exists("/proc/cpuinfo") and not os.environ.get("MINIVISION_ISA_LEVEL"):
        assert CAPS.cpu_source == "/proc/cpuinfo"


def test_an_unreadable_cpuinfo_falls_back_to_pytorchs_reading(monkeypatch):
    """A /proc/cpuinfo that exists but cannot be read (a sandbox's policy) is treated as none, not a crash."""

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(fast.capabilities.Path, "read_text", refuse)
    caps = fast.detect_capabilities.__wrapped__()
    assert caps.cpu_source.startswith("torch.backends.cpu"), caps


def test_isa_level_simulation_only_removes_features():
    assert limit_to_level(AVX512_BF16.cpu_features, "x86-64-v3") == ISA_LEVELS["x86-64-v3"][0]
    assert limit_to_level(AVX2_ONLY.cpu_features, "x86-64-v4-bf16") <= AVX2_ONLY.cpu_features  # never adds
    with pytest.raises(ValueError, match="MINIVISION_ISA_LEVEL"):
        limit_to_level(AVX2_ONLY.cpu_features, "native")


# ---- build ------------------------------------------------------------------------------------------------------


def _header_declarations() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """The exported functions declared in csrc/minivision_kernels.h: name -> (return type, [(parameter, C type)])."""
    text = re.sub(r"/\*.*?\*/", "", fast_build.HEADER.read_text(), flags=re.S)
    declarations = {}
    for restype, name, params in re.findall(r"^(int)\s+(mv_\w+)\(([^)]*)\);", text, flags=re.M):
        parsed = []
        for param in filter(None, (p.strip() for p in " ".join(params.split()).split(","))):
            if param == "void":
                continue
            match = re.fullmatch(r"(.*?)\s*(\**)\s*(\w+)", param)
            ctype = match.group(1) + (" " + match.group(2) if match.group(2) else "")
            parsed.append((match.group(3), ctype))
        declarations[name] = (restype, parsed)
    return declarations


def test_signature_table_mirrors_the_header():
    """Every exported C function is declared once in the header; build.SIGNATURES has the same names, parameter names
    and C types in the same order, and every C file's definitions match the header (the compiler checks those)."""
    assert _header_declarations() == fast_build.SIGNATURES
    definitions = set()
    for source in fast_build.sources():
        definitions |= set(re.findall(r"^int\s+(mv_\w+)\(", source.read_text(), flags=re.M))
    assert definitions == set(fast_build.SIGNATURES)


@needs_kernels
def test_kernel_calls_are_checked_by_name():
    x = _channels_last(1, 16, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="takes"):
        LIB.call("mv_pool_relu_forward_bf16", x=x, y=x, code=x, images=1, height=4, width=4)  # no `channels`
    with pytest.raises(RuntimeError, match="unsupported shape"):
        LIB.call("mv_winograd_input_transform", x=x, v=x, images=1, height=4, width=4, channels=15)


def test_cache_key_differs_per_isa_feature_set():
    """A library is only ever looked up under the key of this CPU's own level (or, for the compiler's default
    target, of its exact feature set): two CPUs sharing a cache folder never load each other's libraries."""
    identity = "/usr/bin/gcc gcc 12.2.0"
    paths = {}
    for caps in (AVX2_ONLY, AVX512, AVX512_BF16, AMX):
        for target in fast_build.build_targets(caps):
            assert target.features <= caps.cpu_features  # a build never uses a feature the CPU lacks
            paths[(target.level, target.features, target.flags)] = fast_build.library_path(target, identity, "x86_64")
    # One file per (level or feature set, flags): AVX512 and AMX share the x86-64-v4 library (both have all it uses),
    # their compiler-default builds differ (keyed by each CPU's whole feature set), as every other pair does.
    assert len(set(paths.values())) == len(paths) == 14
    v3 = fast_build.build_targets(AVX2_ONLY)[0]
    assert v3.level == "x86-64-v3" and "-march=x86-64-v3" in v3.flags and "-march=native" not in v3.flags
    assert fast_build.library_path(v3, identity, "x86_64").name.startswith("minivision_kernels-x86-64-v3-")
    assert fast_build.library_path(v3, identity, "x86_64") == fast_build.library_path(v3, identity, "x86_64")
    assert fast_build.library_path(v3, identity, "x86_64") != fast_build.library_path(v3, "clang 18", "x86_64")
    one_pass = fast_build.build_targets(AVX512_BF16)[0]
    assert one_pass.flags == ("-O3", "-march=x86-64-v4", "-mavx512bf16", "-fopenmp")


def test_off_x86_the_build_targets_the_compilers_default():
    """ARM (Linux aarch64, Apple Silicon arm64): no -march, the compiler's default target with OpenMP, then without
    (Apple clang refuses -fopenmp), keyed by the machine and its features: never an x86 library's key."""
    identity = "/usr/bin/cc Apple clang version 15.0.0"
    for caps in (GRAVITON, MAC):
        targets = fast_build.build_targets(caps)
        assert [t.flags for t in targets] == [("-O3", "-fopenmp"), ("-O3",)]
        assert {t.level for t in targets} == {fast_build.COMPILER_DEFAULT} and targets[0].features == caps.cpu_features
    x86_default = fast_build.build_targets(fast.Capabilities("x86_64", frozenset()))[-1]
    mac_default = fast_build.build_targets(MAC)[-1]
    assert x86_default.flags == mac_default.flags and x86_default.features == mac_default.features  # all but machine
    assert fast_build.library_path(x86_default, identity, "x86_64") != fast_build.library_path(mac_default, identity,
                                                                                                "arm64")  # fmt: skip


@needs_kernels
def test_this_cpu_builds_for_its_own_level():
    assert BUILD.target.features <= CAPS.cpu_features
    if CAPS.isa_level in ISA_LEVELS:
        assert BUILD.target.level == CAPS.isa_level and "-march=native" not in BUILD.target.flags
    assert LIB.one_pass_winograd == ("avx512_bf16" in BUILD.target.features)


# The variables that make a CPU look like another (see fast.capabilities): a test of what a real CPU gets drops them.
ISA_OVERRIDES = ("MINIVISION_ISA_LEVEL", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def _run(code: str, tmp_path, refuse: str | None = None, prefix: tuple[str, ...] = (), timeout: int = 300,
         unset: tuple[str, ...] = (), **env) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `code` in a fresh Python with an empty kernel cache, without the variables in `unset`; with `refuse`, its
    C compiler (gcc behind a wrapper) fails on every flag starting with `refuse`; `prefix` runs the interpreter under
    another program (an emulator)."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update({"MINIVISION_CACHE": str(tmp_path / "cache"), **env})
    if refuse:
        compiler = tmp_path / "cc-refusing"
        compiler.write_text(f'#!/bin/sh\nfor a in "$@"; do case "$a" in {refuse}*) echo "no $a" >&2; exit 1;; esac; '
                            'done\nexec gcc "$@"\n')  # fmt: skip
        compiler.chmod(0o755)
        environment["CC"] = str(compiler)
    return subprocess.run([*prefix, sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@needs_kernels
def test_kernel_builds_into_the_cache_folder(tmp_path):
    code = "from minivision_hf import fast\nprint(fast.load_kernels(fast.detect_capabilities()).library.path)\n"
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    built = list((tmp_path / "cache" / "minivision_hf").glob("minivision_kernels-*.so"))
    assert len(built) == 1 and result.stdout.strip() == str(built[0])
    assert built[0].name.startswith(f"minivision_kernels-{BUILD.target.level}-")


@needs_kernels
@pytest.mark.parametrize("kept", [0.0, 0.5])
def test_a_cached_library_that_does_not_load_is_rebuilt(tmp_path, kept):
    """A truncated cached library (a full disk, a killed copy) is built again: one cut mid-file is never handed to
    dlopen, which maps it and dies of SIGBUS at the first page past its end."""
    code = "from minivision_hf import fast\nbuild = fast.load_kernels(fast.detect_capabilities())\nprint(build.flags)\n"
    first = _run(code, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (built,) = (tmp_path / "cache" / "minivision_hf").glob("minivision_kernels-*.so")
    whole = built.read_bytes()
    built.write_bytes(whole[: int(len(whole) * kept)])
    again = _run(code, tmp_path)
    assert again.returncode == 0 and again.stdout == first.stdout, again  # the same target (with OpenMP), rebuilt
    assert built.stat().st_size > len(whole) * kept


@needs_kernels
def test_a_library_copied_under_another_builds_name_is_rebuilt(tmp_path, monkeypatch):
    """The key in a cached library's file name is checked against the key it was built under: this CPU's library
    copied by hand under the name of another build (here: the same level without OpenMP; as well another CPU's level
    in a shared cache folder) does not load, and that build is compiled afresh in its place."""
    monkeypatch.setenv("MINIVISION_CACHE", str(tmp_path))
    assert LIB.build_key() == fast_build.file_key(LIB.path) != ""
    identity = fast_build.compiler_identity(fast_build.find_compiler())
    other = next(t for t in fast_build.build_targets(CAPS) if t != BUILD.target)
    path = fast_build.library_path(other, identity, CAPS.machine)
    path.parent.mkdir(parents=True)
    shutil.copy(LIB.path, path)
    with pytest.raises(OSError, match="was built under key"):
        fast_build.KernelLibrary(path, other)
    assert fast_build._load_cached(path, other) is None
    monkeypatch.setattr(fast_build, "_load_library", functools.cache(fast_build.KernelLibrary))
    monkeypatch.setattr(fast_build, "build_targets", lambda capabilities: [other])
    result = fast_build.load_kernels.__wrapped__(CAPS)
    assert result.target == other and result.library.path == path, result
    assert result.library.build_key() == fast_build.file_key(path)


def test_a_library_cut_inside_its_elf_header_counts_as_cut_short(tmp_path):
    """A cache file of the ELF magic alone (4 or 5 bytes) raised IndexError out of load_kernels instead of a rebuild."""
    from minivision_hf.fast.build import _cut_short

    path = tmp_path / "lib.so"
    for data, cut in [(b"\x7fELF", True), (b"\x7fELF\x02", True), (b"\x7fELF\x02\x01" + bytes(40), True),
                      (b"", False), (b"MZ" + bytes(100), False)]:  # fmt: skip
        path.write_bytes(data)
        assert _cut_short(path) is cut, data


@needs_kernels
def test_a_broken_library_in_a_read_only_cache_folder_is_rebuilt_in_the_temp_folder(tmp_path, monkeypatch):
    """A cached library that does not load, in a cache folder that cannot be written (a read-only shared cache): the
    same target, with OpenMP, is built in the temp folder's cache, not a lesser one (single-threaded) instead."""
    read_only = tmp_path / "cache" / "minivision_hf"
    monkeypatch.setenv("MINIVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    identity = fast_build.compiler_identity(fast_build.find_compiler())
    first = fast_build.build_targets(CAPS)[0]  # what a build tries first (BUILD.target, unless it failed here)
    broken = fast_build.library_path(first, identity, CAPS.machine)
    read_only.mkdir(parents=True)
    broken.write_bytes(b"")
    unlink = Path.unlink

    def refused(path, *args, **kwargs):  # a read-only mount (root may write to a folder without write permission)
        if path.parent == read_only:
            raise PermissionError(30, "Read-only file system", str(path))
        return unlink(path, *args, **kwargs)

    def compile_by_copy(compiler, target, path):  # this machine's library stands in for a build (no compiler run)
        refused(path.parent / "new", missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIB.path, path)

    monkeypatch.setattr(Path, "unlink", refused)
    monkeypatch.setattr(fast_build, "_writable", lambda folder: folder != read_only)
    monkeypatch.setattr(fast_build, "_compile", compile_by_copy)
    result = fast_build.load_kernels.__wrapped__(CAPS)
    assert result.target == first and not result.attempts, result
    assert result.library.path == fast_build.temp_cache_dir() / broken.name


def test_a_library_without_the_kernels_exports_falls_back_to_pytorch(tmp_path, monkeypatch):
    """A compiler whose library exports none of the header's functions (hidden visibility; LLVM clang for Windows'
    MSVC target exports nothing not marked dllexport) is a failed build, not a crash: every target is tried, then the
    fast path runs PyTorch's ops with the reason. Any shared library without them stands in (torch._C's: a file on
    every build of Python, where _ctypes may be built in)."""
    monkeypatch.setenv("MINIVISION_CACHE", str(tmp_path))
    monkeypatch.setattr(fast_build, "_load_library", functools.cache(fast_build.KernelLibrary))  # cleared on failure
    monkeypatch.setattr(fast_build, "find_compiler", lambda: "cc")
    monkeypatch.setattr(fast_build, "_compile", lambda compiler, target, path: shutil.copy(torch._C.__file__, path))
    result = fast_build.load_kernels.__wrapped__(AVX2_ONLY)
    assert result.library is None and "does not export mv_pool_relu_forward_bf16" in result.error, result
    assert len(result.error.split(" | ")) == len(fast_build.build_targets(AVX2_ONLY))


@needs_kernels
@pytest.mark.skipif(os.name == "nt" or shutil.which("gcc") is None, reason="a POSIX shell script wrapping gcc")
def test_a_compiler_command_with_words_in_cc_is_used(tmp_path, monkeypatch):
    """CC holds a command, as make takes it ("ccache gcc", "zig cc" where there is no gcc, e.g. on Windows): the
    kernels are built with that command, not with the first compiler on PATH."""
    log, wrapper = tmp_path / "calls", tmp_path / "wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", f"{wrapper} gcc")
    monkeypatch.setenv("MINIVISION_CACHE", str(tmp_path / "cache"))
    assert fast_build.find_compiler() == f"{wrapper} gcc"
    result = fast_build.load_kernels.__wrapped__(CAPS)
    assert result.library is not None and result.library.path.is_relative_to(tmp_path), result.error
    assert "-shared" in log.read_text() and fast_build.compiler_identity(f"{wrapper} gcc").startswith(f"{wrapper} gcc")


def test_without_a_home_folder_the_kernel_cache_is_in_the_temp_folder(monkeypatch):
    from minivision_hf.fast import build

    for name in ("MINIVISION_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(build.Path, "home", staticmethod(no_home))
    assert build.cache_dir().parent.parent == Path(tempfile.gettempdir())


def test_a_failed_builds_reason_is_its_error_lines_not_its_warnings():
    warnings = "\n".join(f"csrc/winograd.c:{i}: note: the ABI for passing changed (-Wpsabi)" for i in range(40))
    output = f"{warnings}\n/usr/bin/ld: final link failed: No space left on device\ncollect2: error: ld returned 1"
    assert fast_build.compiler_error(output) == ("/usr/bin/ld: final link failed: No space left on device / "
                                                 "collect2: error: ld returned 1")  # fmt: skip
    assert fast_build.compiler_error("x" * 1000 + "the end").endswith("the end")  # no error line: the end
    assert len(fast_build.compiler_error("error " * 100)) == 300


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_temp_cache_folder_planted_by_another_user_is_passed_over(tmp_path, monkeypatch):
    """The shared temp folder is writable by all: its per-user cache is made 0700 and used only when this user owns
    it and no one else can write to it; a folder planted there (another owner, world-writable, a link) is not used."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fast_build._private_temp_dir.cache_clear()
    mine = tmp_path / f"minivision-cache-{os.getuid()}"
    assert fast_build.temp_cache_dir() == mine / "minivision_hf" and mine.stat().st_mode & 0o777 == 0o700
    mine.chmod(0o777)  # anyone could have put a library in it
    assert not fast_build.temp_cache_dir().is_relative_to(mine)
    mine.rmdir()
    mine.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    private = fast_build.temp_cache_dir()
    assert not private.is_relative_to(mine) and private.parent.stat().st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # only root can hand a folder to another owner
        mine.unlink()
        mine.mkdir(mode=0o700)
        os.chown(mine, 12345, 12345)
        assert not fast_build.temp_cache_dir().is_relative_to(mine)
    fast_build._private_temp_dir.cache_clear()


@needs_kernels
def test_a_cache_folder_that_cannot_be_written_builds_in_the_temp_folder(tmp_path, monkeypatch):
    """A read-only cache folder (a read-only home on a cluster node, a container's read-only image) or one that
    cannot be created: the library is built in this user's temp-folder cache, not skipped for PyTorch's ops."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MINIVISION_CACHE", str(tmp_path / "file" / "cache"))  # under a file: never a folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    built = []

    def compile_by_copy(compiler, target, path):  # this machine's library stands in for a build (no compiler run)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LIB.path, path)
        built.append(path)

    monkeypatch.setattr(fast_build, "_compile", compile_by_copy)
    result = fast_build.load_kernels.__wrapped__(CAPS)
    assert result.library is not None, result.error
    assert built and result.library.path == built[0] and built[0].parent == fast_build.temp_cache_dir()
    assert fast_build.temp_cache_dir().is_relative_to(tmp_path / "tmp")


@needs_kernels
def test_kernels_build_without_openmp(tmp_path):
    """A compiler without OpenMP (e.g. Apple clang) still builds the kernels for the CPU's level, single-threaded."""
    code = (
        "import torch\n"
        "from minivision_hf import fast\n"
        "build = fast.load_kernels(fast.detect_capabilities())\n"
        "x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)\n"
        "assert torch.equal(fast.FusedMaxPoolReLU(build.library)(x), fast.pool_relu_reference(x))\n"
        "import minivision_hf as mv\n"
        "report = fast.apply_fast_kernels(mv.MiniVisionForImageClassification(mv.MiniVisionConfig()))\n"
        "print(report['build_attempts_failed'])\n"
        "print(build.flags)\n"
    )
    result = _run(code, tmp_path, refuse="-fopenmp")
    assert result.returncode == 0, result.stderr[-2000:]
    failed, flags = result.stdout.strip().splitlines()[-2:]
    assert flags == " ".join(f for f in BUILD.target.flags if f != "-fopenmp")
    assert "no -fopenmp" in failed  # the run record says why the kernels are single-threaded


@needs_kernels
@x86
def test_compiler_refusing_the_level_falls_back_to_its_default_target(tmp_path):
    """A compiler that knows no -march=x86-64-vN builds for its default target (keyed by this CPU's features): no
    one-pass Winograd there, so a CPU with native bf16 chooses the c+bmm path, with the same results to bf16
    rounding."""
    code = (
        "import torch\n"
        "from minivision_hf import fast\n"
        "caps = fast.detect_capabilities()\n"
        "build = fast.load_kernels(caps)\n"
        "assert build.target.level == 'compiler-default' and build.flags == '-O3 -fopenmp', build.flags\n"
        "assert not build.library.one_pass_winograd\n"
        "conv = torch.nn.Conv2d(32, 64, 3, 1, 1)\n"
        "path = fast.choose_block_path(conv, fast.plan_fast_path(caps, bf16=True))\n"
        "assert path is (fast.KernelPath.C_BMM if caps.cpu_bf16_native else fast.KernelPath.TORCH_CONV_C_POOL), path\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(4, 32, 14, 14).contiguous(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    out = fast.WinogradConvPoolReLU.apply(x, conv.weight, conv.bias, build.library, False)\n"
        "    ref = fast.conv_pool_relu_reference(x, conv)\n"
        "err = (out.float() - ref.float()).abs().max() / ref.float().abs().max()\n"
        "assert err < 3e-2, err\n"
        "print('ok')\n"
    )
    result = _run(code, tmp_path, refuse="-march")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_no_compiler_falls_back_with_a_warning(tmp_path):
    """Without a C compiler the fast path keeps working on PyTorch's ops, says why, and reports it."""
    code = (
        "import warnings, torch\n"
        "import minivision_hf as mv\n"
        "from minivision_hf import fast\n"
        "build = fast.load_kernels(fast.detect_capabilities())\n"
        "assert build.library is None and 'no C compiler' in build.error, build\n"
        "model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    report = fast.apply_fast_kernels(model)\n"
        "assert any('runs PyTorch' in str(w.message) for w in caught)\n"
        "assert not report['kernels_built'] and set(p['path'] for p in report['blocks'].values()) == {'torch'}\n"
        "x = torch.randn(2, 1, 28, 28)\n"
        "assert model.eval()(pixel_values=x).logits.shape == (2, 10)\n"
        "print('ok')\n"
    )
    result = _run(code, tmp_path, PATH=str(tmp_path), HOME=str(tmp_path), CC="")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# ---- choose -----------------------------------------------------------------------------------------------------


def _plan(caps: fast.Capabilities, device: str = "cpu", bf16: bool | None = None, library=LIB, winograd=True):
    """A plan for a faked machine that uses this machine's library (which only ever runs the kernels this CPU has)."""
    build = fast.BuildResult(library, BUILD.target) if library is not None else fast.BuildResult(None, error="none")
    return fast.plan_fast_path(caps, device, bf16, winograd, build=build)


class _LibraryWithoutOnePass:
    """What the c+bmm choice looks at in a library built without AVX-512 BF16 (never called here)."""

    one_pass_winograd = False


class _LibraryWithOnePass:
    """... and in one built with it (as this machine's is only where the CPU has AVX-512 BF16; never called here)."""

    one_pass_winograd = True


CHOICE_CASES = ["avx512-bf16", "avx512-bf16-no-one-pass", "amx", "avx2", "avx2-forced-bf16", "bf16-off", "no-library",
                "cuda", "mps", "aarch64", "apple-silicon-cpu"]  # fmt: skip


@needs_kernels
@pytest.mark.parametrize(
    ("caps", "device", "bf16", "library", "precision", "paths"),
    [
        (AVX512_BF16, "cpu", None, _LibraryWithOnePass(), "bf16", ["c-one-pass", "c-one-pass"]),
        (AVX512_BF16, "cpu", None, _LibraryWithoutOnePass(), "bf16", ["c-one-pass", "c+bmm"]),
        (AMX, "cpu", None, _LibraryWithoutOnePass(), "bf16", ["c-one-pass", "c+bmm"]),
        (AVX2_ONLY, "cpu", None, LIB, "fp32", ["c-one-pass", "c+bmm"]),  # the fp32 kernels: direct, Winograd + bmm
        (AVX2_ONLY, "cpu", True, LIB, "bf16", ["c-one-pass", "torch-conv+c-pool-relu"]),  # --bf16 on: no bf16 bmm
        (AVX512_BF16, "cpu", False, LIB, "fp32", ["c-one-pass", "c+bmm"]),  # --bf16 off: the fp32 kernels
        (AVX512_BF16, "cpu", None, None, "bf16", ["torch", "torch"]),  # no compiler
        (CUDA_GPU, "cuda", None, None, "bf16", ["torch", "torch"]),
        (MAC, "mps", None, None, "fp32", ["torch", "torch"]),
        (GRAVITON, "cpu", None, _LibraryWithoutOnePass(), "fp32", ["c-one-pass", "c+bmm"]),  # bf16 only on x86 (yet)
        (MAC, "cpu", None, _LibraryWithoutOnePass(), "fp32", ["c-one-pass", "c+bmm"]),
    ],
    ids=CHOICE_CASES,
)
def test_kernel_paths_follow_the_capabilities(caps, device, bf16, library, precision, paths):
    plan = _plan(caps, device, bf16, library) if device == "cpu" else fast.plan_fast_path(caps, device, bf16)
    assert plan.precision == precision and plan.device == device
    config = mv.MiniVisionConfig()
    convs = [torch.nn.Conv2d(1, config.conv_channels[0], 3, 1, 1), torch.nn.Conv2d(*config.conv_channels[:2], 3, 1, 1)]
    assert [str(fast.choose_block_path(conv, plan)) for conv in convs] == paths
    assert str(fast.choose_block_path(convs[1], _plan(caps, device, bf16, library, winograd=False))) in (
        "torch-conv+c-pool-relu",
        "torch",
    )  # --no-winograd


@needs_kernels
def test_the_chosen_path_is_stored_shown_and_reported():
    """Chosen once when the model is prepared: on the module, in its repr, in the report the run record stores."""
    model = _model()
    report = fast.apply_fast_kernels(model, capabilities=CAPS)
    expected = fast.choose_block_path(model.minivision.blocks[1].conv, fast.plan_fast_path(CAPS))
    assert model.minivision.blocks[1].path is expected
    assert f"path={expected}, conv=" in repr(model.minivision.blocks[1])
    assert report["blocks"]["minivision.blocks.1"]["path"] == str(expected)
    assert report["capabilities"] == CAPS.as_record() and report["kernel_isa_level"] == BUILD.target.level
    assert report["precision"] == ("bf16" if CAPS.cpu_bf16_native else "fp32") and report["device"] == "cpu"


@needs_kernels
def test_avx2_only_cpu_trains_in_fp32_with_the_fp32_kernels():
    """The AVX2-only choice, here: fp32 (bf16 would be emulated), the first block as the fp32 direct kernel and the
    second as fp32 Winograd (C transforms + fp32 torch.bmm). Same function as the plain model: logits and every
    gradient equal to fp32 rounding (the Winograd products sum in another order than oneDNN's direct conv)."""
    plain, fused = _model(dropout=0.0), _model(dropout=0.0)
    plan = _plan(AVX2_ONLY)
    swapped = fast.swap.swap_blocks(fused, plan)
    assert [m.path for m in swapped.values()] == [fast.KernelPath.C_ONE_PASS, fast.KernelPath.C_BMM]
    assert "path=c-one-pass, conv=direct, precision=fp32" in repr(fused)
    assert "path=c+bmm, conv=winograd, precision=fp32, winograd_tile=F(4x4, 3x3)" in repr(fused)
    x, labels = _digits(32), torch.randint(0, 10, (32,))
    results = []
    for model in (plain, fused):
        out = model.train()(pixel_values=x, labels=labels)  # fp32: no autocast
        out.loss.backward()
        results.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert results[1][0].dtype == torch.float32
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    for name, grad in results[0][1].items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (results[1][1][name] - grad).abs().max() <= 1e-3 * scale, name


@pytest.mark.parametrize("tile", [2, 4], ids=["F2x2", "F4x4"])
def test_fp32_kernels_match_a_float64_reference(tile):
    """The fp32 first-block and Winograd kernels (F(2x2, 3x3) and F(4x4, 3x3)), forward and backward, against PyTorch
    in float64: equal to fp32 rounding (relative 1e-5 of the largest value; 3e-5 for F(4x4), whose transforms scale by
    up to 8 and 1/24), including an odd batch, a chunk that does not divide it, and maps whose F(4x4) tiles run past
    the edge (14 x 14, 6 x 10: the outputs past it are dropped, their windows never pooled)."""
    torch.manual_seed(0)
    for c_in, c_out, (height, width), batch in ((1, 32, (28, 28), 5), (32, 64, (14, 14), 5), (16, 16, (6, 10), 3)):
        if c_in == 1 and tile == 4:
            continue  # the first block has its own direct kernel
        conv = torch.nn.Conv2d(c_in, c_out, 3, 1, 1).double()
        first = c_in == 1
        x = torch.randn(batch, c_in, height, width, dtype=torch.float64, requires_grad=not first)
        reference = fast.conv_pool_relu_reference(x, conv)
        grad = torch.randn_like(reference)
        reference.backward(grad)
        conv32 = torch.nn.Conv2d(c_in, c_out, 3, 1, 1)
        conv32.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
        x32 = x.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_(not first)
        if first:
            y = fast.Conv1PoolReLU.apply(x32, conv32.weight, conv32.bias, LIB, False)
        else:
            y = fast.WinogradConvPoolReLU.apply(x32, conv32.weight, conv32.bias, LIB, False, 2, False, tile)
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
        y.backward(grad.float().contiguous(memory_format=torch.channels_last))
        pairs = [(y, reference), (conv32.weight.grad, conv.weight.grad), (conv32.bias.grad, conv.bias.grad)]
        pairs += [] if first else [(x32.grad, x.grad)]
        for got, want in pairs:
            tolerance = 3e-5 if tile == 4 else 1e-5
            assert (got.double() - want).abs().max() <= tolerance * want.abs().max(), (c_in, c_out, got.shape)


@needs_kernels
def test_winograd_4x4_arrays_end_in_a_zero_spare_tile():
    """F(4x4)'s Winograd-domain arrays are (36, T + 1, C): the transforms that feed torch.bmm (V and dM) write zeros
    into each row's spare last tile whatever the buffer held, so the products over whole arrays stay exact (a NaN
    left there would reach dU = V^T dM)."""
    n, h, w, c = 2, 6, 10, 16
    t = n * ((h + 3) // 4) * ((w + 3) // 4)
    x = _channels_last(n, c, h, w)
    v = torch.full((36, t + 1, c), float("nan"))
    LIB.call("mv_winograd4x4_input_transform_f32", x=x, v=v, images=n, height=h, width=w, channels=c)
    assert torch.equal(v[:, t], torch.zeros(36, c)) and not v[:, :t].isnan().any()
    grad = _channels_last(n, c, h // 2, w // 2)
    code = torch.randint(0, 5, (n, h // 2, w // 2, c), dtype=torch.int16)
    grad_m, grad_bias = torch.full((36, t + 1, c), float("nan")), torch.zeros(c)
    LIB.call("mv_winograd4x4_output_pool_relu_backward_f32", grad_y=grad, code=code, grad_m=grad_m,
             grad_bias=grad_bias, images=n, height=h, width=w, channels=c)  # fmt: skip
    assert torch.equal(grad_m[:, t], torch.zeros(36, c)) and not grad_m[:, :t].isnan().any()
    passed = grad.permute(0, 2, 3, 1) * (code < 4)
    torch.testing.assert_close(grad_bias, passed.sum((0, 1, 2)))


@pytest.mark.skipif(not {"avx2", "fma"} <= CAPS.cpu_features, reason="needs a CPU with AVX2 (x86-64-v3)")
def test_x86_64_v3_build_runs_the_avx2_choices(tmp_path):
    """MINIVISION_ISA_LEVEL=x86-64-v3: this CPU seen as AVX2-only, end to end in a fresh process. The library is built
    for x86-64-v3 (no AVX-512 anywhere in it), the plan is fp32 with the fp32 kernels (direct first block, Winograd +
    fp32 bmm), and every kernel still computes its reference, in fp32 and with bf16 forced."""
    code = (
        "import torch\n"
        "import minivision_hf as mv\n"
        "from minivision_hf import fast\n"
        "caps = fast.detect_capabilities()\n"
        "assert caps.isa_level == 'x86-64-v3' and not caps.cpu_bf16_native, caps\n"
        "torch.manual_seed(0)\n"
        "model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)\n"
        "report = fast.apply_fast_kernels(model)\n"
        "assert report['kernel_isa_level'] == 'x86-64-v3' and '-march=x86-64-v3' in report['build_flags'], report\n"
        "assert report['precision'] == 'fp32' and report['winograd_blocks'] == 1, report\n"
        "assert [b['path'] for b in report['blocks'].values()] == ['c-one-pass', 'c+bmm'], report\n"
        "build = fast.load_kernels(caps)\n"
        "lib = build.library\n"
        "assert not lib.one_pass_winograd\n"
        "x = torch.randn(4, 32, 14, 14).contiguous(memory_format=torch.channels_last)\n"
        "assert torch.equal(fast.FusedMaxPoolReLU(lib)(x), fast.pool_relu_reference(x))\n"
        "conv1, conv2 = torch.nn.Conv2d(1, 32, 3, 1, 1), torch.nn.Conv2d(32, 64, 3, 1, 1)\n"
        "img = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    first = fast.Conv1PoolReLU.apply(img, conv1.weight, conv1.bias, lib)\n"
        "    first_ref = fast.conv_pool_relu_reference(img, conv1)\n"
        "    second = fast.WinogradConvPoolReLU.apply(x, conv2.weight, conv2.bias, lib, False)\n"
        "    second_ref = fast.conv_pool_relu_reference(x, conv2)\n"
        "assert (first.float() - first_ref.float()).abs().max() <= 1e-2 * first_ref.float().abs().max()\n"
        "first32 = fast.Conv1PoolReLU.apply(img, conv1.weight, conv1.bias, lib, False)\n"
        "second32 = fast.WinogradConvPoolReLU.apply(x, conv2.weight, conv2.bias, lib, False, 3, False)\n"
        "second32_4x4 = fast.WinogradConvPoolReLU.apply(x, conv2.weight, conv2.bias, lib, False, 3, False, 4)\n"
        "torch.testing.assert_close(first32, fast.conv_pool_relu_reference(img, conv1), rtol=1e-5, atol=1e-5)\n"
        "torch.testing.assert_close(second32, fast.conv_pool_relu_reference(x, conv2), rtol=1e-4, atol=1e-4)\n"
        "torch.testing.assert_close(second32_4x4, fast.conv_pool_relu_reference(x, conv2), rtol=1e-4, atol=1e-4)\n"
        "err = (second.float() - second_ref.float()).abs().max() / second_ref.float().abs().max()\n"
        "assert err < 3e-2, err\n"
        "print('ok')\n"
    )
    result = _run(code, tmp_path, MINIVISION_ISA_LEVEL="x86-64-v3")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    built = list((tmp_path / "cache" / "minivision_hf").glob("*.so"))
    assert [p.name.split("-")[1:-1] for p in built] == [["x86", "64", "v3"]]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (apt-get install qemu-user)")
@pytest.mark.skipif(not {"avx2", "fma"} <= CAPS.cpu_features, reason="needs a CPU with AVX2 (x86-64-v3)")
def test_fast_training_step_on_an_emulated_avx2_only_cpu(tmp_path):
    """The fast path on a CPU that has no AVX-512 at all: this interpreter under `qemu-x86_64 -cpu Haswell` (AVX2 and
    FMA; QEMU stops a program at its first AVX-512 instruction). No variable asks for it: /proc/cpuinfo there is the
    host's (AVX-512), PyTorch's CPUID reading is AVX2, and the detection follows the CPU. The library is built for
    x86-64-v3, the plan is fp32, and an evaluation and a training step (loss, every gradient) equal PyTorch's own
    modules run on the same emulated CPU."""
    code = (
        "import torch\n"
        "import minivision_hf as mv\n"
        "from minivision_hf import fast\n"
        "caps = fast.detect_capabilities()\n"
        "assert torch.backends.cpu.get_cpu_capability() == 'AVX2'\n"
        "assert caps.isa_level == 'x86-64-v3' and not caps.cpu_bf16_native, caps\n"
        f"assert {'avx512f' in CAPS.cpu_features} <= ('CPUID' in caps.cpu_source), caps  # host cpuinfo capped\n"
        "torch.manual_seed(0)\n"
        "ref = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)\n"
        "ref.classifier[2].p = 0.0\n"
        "model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig()).to(memory_format=torch.channels_last)\n"
        "model.load_state_dict(ref.state_dict())\n"
        "model.classifier[2].p = 0.0\n"
        "ref.eval(), model.eval()\n"
        "report = fast.apply_fast_kernels(model)\n"
        "assert report['kernel_isa_level'] == 'x86-64-v3' and report['precision'] == 'fp32', report\n"
        "assert [b['path'] for b in report['blocks'].values()] == ['c-one-pass', 'c+bmm'], report\n"
        "g = torch.Generator().manual_seed(1)\n"
        "x = torch.randn(16, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)\n"
        "labels = torch.randint(0, 10, (16,), generator=g)\n"
        "with torch.no_grad():\n"
        "    logits = [m(pixel_values=x).logits for m in (ref, model)]\n"
        "torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)\n"
        "ref.train(), model.train()\n"
        "losses = [m(pixel_values=x, labels=labels).loss for m in (ref, model)]\n"
        "torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)\n"
        "for loss in losses:\n"
        "    loss.backward()\n"
        "for (name, a), b in zip(ref.named_parameters(), model.parameters()):\n"
        "    torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4, msg=name)\n"
        "print('ok')\n"
    )
    result = _run(code, tmp_path, prefix=("qemu-x86_64", "-cpu", "Haswell"), timeout=600, unset=ISA_OVERRIDES)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    built = list((tmp_path / "cache" / "minivision_hf").glob("*.so"))
    assert [p.name.split("-")[1:-1] for p in built] == [["x86", "64", "v3"]]


ZIG = os.environ.get("ZIG") or shutil.which("zig")  # a clang-based cross compiler (not a dependency: CI skips this)
DRIVER = Path(__file__).with_name("fixtures") / "kernels_driver" / "kernels_driver.c"


def _bits_nan_as_one(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp32 data (or integer codes) as integer bits with every NaN as one pattern: x86's default NaN has the
    sign bit set, ARM's does not (the values are the same)."""
    if t.dtype not in (torch.bfloat16, torch.float32):
        return t
    bits = t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)
    return torch.where(t.isnan(), torch.full_like(bits, 0x7FC0 if t.dtype == torch.bfloat16 else 0x7FC00000), bits)


@needs_kernels
@pytest.mark.slow
@pytest.mark.skipif(ZIG is None, reason="zig (a clang-based cross compiler) not found: put it on PATH or set ZIG")
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None, reason="qemu-aarch64 not installed (apt install qemu-user)")
def test_kernels_on_an_emulated_aarch64_match_this_cpus(tmp_path):
    """The C kernels built for aarch64 (vec.h's vectors on NEON, 8 lanes; no OpenMP) by zig, run under qemu-aarch64,
    give this CPU's library's outputs on the same inputs, single-threaded: bit for bit (every NaN counted as one:
    x86's default NaN has the sign bit, ARM's not); the fp32 first block to fp32 rounding (FMA or not). Inputs hold
    NaN, +-0, -inf, ties and negatives; denormals only where nothing rounds to bf16 (an AVX-512 BF16 library flushes
    them there, as oneDNN does)."""
    n, g = 2, torch.Generator().manual_seed(0)

    def data(*shape, special=True, denormal=False):  # quarter steps: ties in most pooling windows
        x = (torch.randn(*shape, generator=g) * 4).round() / 4
        if special:
            pick = torch.randint(0, 40, shape, generator=g)
            for code, value in enumerate([float("nan"), -0.0, 0.0, float("-inf")] + [1e-39] * denormal):
                x[pick == code] = value
        return x

    pool_x, first_x, win_x, win_m = data(n, 14, 14, 64, denormal=True), data(n, 28, 28), data(n, 14, 14, 32), \
        data(16, n * 49, 64) * 3  # fmt: skip
    first_x[0, 5, 7] = float("nan")
    taps, bias1, bias2 = torch.randn(9, 32, generator=g) / 2, torch.randn(32, generator=g) / 10, torch.randn(64) / 10
    bias1[3] = -100.0  # a channel ReLU closes everywhere
    bf16 = [t.bfloat16() for t in (pool_x, first_x, win_x, win_m)]
    f32 = [pool_x, first_x + torch.randn(first_x.shape, generator=g) * 1e-3, win_x, win_m]  # full fp32 mantissas
    stdin = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in (*bf16, *f32, taps, bias1, bias2))

    exe = tmp_path / "kernels_driver"
    sources = [str(DRIVER), *map(str, fast_build.sources())]
    build = subprocess.run([ZIG, "cc", "-target", "aarch64-linux-musl", "-O3", "-static", f"-I{fast_build.CSRC}",
                            *sources, "-o", str(exe)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(["qemu-aarch64", str(exe), str(n)], input=stdin, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]

    def here(name, x, y_dtype, code_dtype, out_numel, **sizes):  # this CPU's library, one thread
        y, code = torch.empty(out_numel, dtype=y_dtype), torch.empty(out_numel, dtype=code_dtype)
        LIB.call(name, x=x, y=y, code=code, threads=1, **sizes)
        return [y, code]

    def winograd_here(name, **arguments):
        out = {key: torch.empty(numel, dtype=dtype) for key, (numel, dtype) in arguments.pop("out").items()}
        LIB.call(name, **arguments, **out, threads=1)
        return list(out.values())

    t, pool, first, win = n * 49, dict(images=n, height=14, width=14, channels=64), \
        dict(images=n, height=28, width=28, channels=32), dict(images=n, height=14, width=14)  # fmt: skip
    expected = [
        *here("mv_pool_relu_forward_bf16", bf16[0], torch.bfloat16, torch.int16, t * 64, **pool),
        *here("mv_pool_relu_forward_f32", f32[0], torch.float32, torch.float32, t * 64, **pool),
    ]
    for x, dtype, name in ((bf16[1], torch.bfloat16, "mv_conv1_pool_relu_forward"),
                           (f32[1], torch.float32, "mv_conv1_pool_relu_forward_f32")):  # fmt: skip
        expected += winograd_here(name, x=x, taps=taps, bias=bias1, out={"y": (n * 196 * 32, dtype),
                                                                         "code": (n * 196 * 32, torch.int16)}, **first)
    for x, dtype, suffix in ((bf16[2], torch.bfloat16, ""), (f32[2], torch.float32, "_f32")):
        expected += winograd_here(f"mv_winograd_input_transform{suffix}", x=x, out={"v": (16 * t * 32, dtype)},
                                  channels=32, **win)  # fmt: skip
    for m, dtype, suffix in ((bf16[3], torch.bfloat16, ""), (f32[3], torch.float32, "_f32")):
        expected += winograd_here(f"mv_winograd_output_pool_relu{suffix}", m=m, bias=bias2,
                                  out={"y": (t * 64, dtype), "code": (t * 64, torch.int16)}, channels=64, **win)
    names = ["pool bf16", "pool bf16 codes", "pool f32", "pool f32 codes", "first bf16", "first bf16 codes",
             "first f32", "first f32 codes", "winograd input bf16", "winograd input f32", "winograd output bf16",
             "winograd output bf16 codes", "winograd output f32", "winograd output f32 codes"]  # fmt: skip

    output, at = run.stdout, 0
    for name, want in zip(names, expected, strict=True):
        size = want.numel() * want.element_size()
        got = torch.frombuffer(bytearray(output[at : at + size]), dtype=want.dtype)
        at += size
        if name == "first f32":
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, equal_nan=True, msg=name)
        else:
            assert torch.equal(_bits_nan_as_one(got), _bits_nan_as_one(want)), name
    assert output[at:] == (0).to_bytes(4, "little")  # mv_winograd_one_pass_built(): AVX-512 BF16 only


ZEN3_FLAGS = ("fpu sse sse2 ssse3 sse4_1 sse4_2 pni cx16 lahf_lm popcnt abm movbe xsave avx avx2 fma f16c bmi1 bmi2 "
              "sha_ni vaes vpclmulqdq")  # an AVX2-only EPYC's /proc/cpuinfo (no AVX-512, no VNNI)
AVX512_HOST_FLAGS = ZEN3_FLAGS + " avx512f avx512bw avx512cd avx512dq avx512vl avx512_bf16 avx512_vnni avx_vnni"


@pytest.mark.parametrize(
    ("flags", "torch_level", "machine", "level", "capped"),
    [
        (AVX512_HOST_FLAGS, "AVX512", "x86_64", "x86-64-v4-bf16", False),  # both agree
        (AVX512_HOST_FLAGS, "AVX2", "x86_64", "x86-64-v3", True),  # qemu -cpu Haswell: the host's cpuinfo
        (AVX512_HOST_FLAGS, "DEFAULT", "x86_64", "x86-64-v2", True),  # no AVX2 at all
        (ZEN3_FLAGS, "AVX2", "x86_64", "x86-64-v3", False),  # a real AVX2-only CPU: nothing to cap
        (ZEN3_FLAGS + " avx_vnni", "AVX2", "x86_64", "x86-64-v3", False),  # Alder Lake: its AVX-VNNI is kept
        ("fp asimd asimddp bf16", "DEFAULT", "aarch64", "aarch64", False),  # off x86: no cap
    ],
)
def test_cpu_features_are_capped_by_pytorchs_cpuid_reading(flags, torch_level, machine, level, capped):
    features, source = fast.capabilities.cpu_features_from(f"flags\t: {flags}\n", torch_level, machine)
    caps = fast.Capabilities(machine, features, source)
    assert caps.isa_level == level and ("capped" in source) == capped, source
    if not capped:
        assert features == read_cpu_features(f"flags: {flags}")  # nothing dropped, sse2 and sha_ni included
    if "avx_vnni" in flags and level == "x86-64-v3" and not capped:
        assert caps.cpu_int8_dot_products  # AVX-VNNI is an AVX2-level feature
    if capped:  # the emulated CPU's features are the level's, nothing of the host's text beyond them
        assert features == ISA_LEVELS[level][0] & read_cpu_features(f"flags: {flags}")
    assert fast.capabilities.cpu_features_from(None, torch_level, machine)[1] == f"torch.backends.cpu ({torch_level})"
    with_env = fast.capabilities.cpu_features_from(f"flags: {flags}", torch_level, machine, "avx2")[1]
    assert ("ATEN_CPU_CAPABILITY=avx2" in with_env) == capped


def test_a_swapped_model_keeps_its_eval_mode():
    """apply_fast_kernels on a model already in eval mode: the swapped-in modules (FastDropout above all) are in eval
    mode too, so its outputs are deterministic and equal the unswapped model's."""
    ref = _model().eval()
    model = copy.deepcopy(ref)
    fast.apply_fast_kernels(model, capabilities=AVX2_ONLY)
    assert not any(m.training for m in model.modules())
    x = _digits(8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, ref(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    model.train()
    assert all(m.training for m in model.modules())
    frozen = _model().train()
    frozen.minivision.blocks[0].norm.eval()  # a BatchNorm held in eval mode on purpose
    fast.apply_fast_kernels(frozen, capabilities=AVX2_ONLY)
    assert frozen.minivision.blocks[0].training and not frozen.minivision.blocks[0].norm.training


def test_cuda_choice_runs_pytorchs_ops_and_fast_dropout():
    """The CUDA path, testable without a GPU: a plan for device cuda uses no C kernels (every block on PyTorch's ops,
    bf16 where the GPU has it) and the swapped model computes exactly what the plain model does."""
    plain, fused = _model(dropout=0.0), _model(dropout=0.0)
    report = fast.apply_fast_kernels(fused, device="cuda", capabilities=CUDA_GPU)  # builds nothing, runs nothing
    assert report["device"] == "cuda" and report["precision"] == "bf16" and not report["kernels_built"]
    assert _paths(report) == ["torch", "torch"] and "CPU-only" in report["build_error"]
    assert report["fast_dropouts"] == 1 and "path=torch" in repr(fused)
    x = _digits(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same modules on the CPU: PyTorch's ops only
        assert torch.equal(plain.train()(pixel_values=x).logits, fused.train()(pixel_values=x).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): the CUDA path is checked only "
                    "through faked capabilities above")  # fmt: skip
def test_fast_path_trains_on_cuda():
    plain, fused = _model(dropout=0.0).cuda(), _model(dropout=0.0).cuda()
    report = fast.apply_fast_kernels(fused)
    assert report["device"] == "cuda" and _paths(report) == ["torch", "torch"]
    x, labels = _digits(64).cuda(), torch.randint(0, 10, (64,)).cuda()
    results = []
    for model in (plain, fused):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=report["precision"] == "bf16"):
            out = model.train()(pixel_values=x, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), model.minivision.blocks[0].conv.weight.grad))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])
    drop = fast.FastDropout(0.3).train()
    zeros = (drop(torch.ones(1000, 1000, device="cuda")) == 0).float().mean().item()
    assert abs(zeros - 0.3) < 0.005


# ---- the kernels ------------------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(8, 32, 28, 28), (4, 64, 14, 14), (3, 5, 6, 8)])
def test_pool_relu_matches_pytorch_bit_for_bit(dtype, shape):
    x = _channels_last(*shape, dtype=dtype)
    x[:, :, :2] = 0.5  # whole windows tied: the first maximum must win, as in max_pool2d
    x[:, :, 2:4, :4] = -0.25  # windows ReLU closes
    x[:, :, 4:6, 4:6] = 0.0  # ReLU's gradient at exactly 0 is 0
    x[0, 0, 0, 0] = float("nan")  # propagated, like max_pool2d
    x.requires_grad_(True)
    grad = _channels_last(shape[0], shape[1], shape[2] // 2, shape[3] // 2, dtype=dtype, seed=1)

    expected = fast.pool_relu_reference(x)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    assert pool_relu_applies(x)
    out = fast.FusedMaxPoolReLU(LIB)(x)
    (out_grad,) = torch.autograd.grad(out, x, grad)

    assert _same(out, expected) and _same(out_grad, expected_grad)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out_grad.is_contiguous(memory_format=torch.channels_last)


@needs_kernels
def test_pool_relu_falls_back_where_unsupported():
    x = torch.randn(2, 3, 6, 6)  # NCHW: not the kernel's layout
    assert not pool_relu_applies(x)
    assert torch.equal(fast.FusedMaxPoolReLU(LIB)(x), fast.pool_relu_reference(x))
    odd = _channels_last(2, 3, 5, 6)
    assert not pool_relu_applies(odd)
    assert torch.equal(fast.FusedMaxPoolReLU(LIB)(odd), fast.pool_relu_reference(odd))


@needs_kernels
@pytest.mark.parametrize("out_channels", [32, 5])  # 16-channel vector path and the generic loop
def test_conv_pool_relu_matches_autocast_pytorch(out_channels):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, out_channels, 3, 1, 1).to(memory_format=torch.channels_last)
    x = _digits(16)
    grad = _channels_last(16, out_channels, 14, 14, dtype=torch.bfloat16, seed=2)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = fast.conv_pool_relu_reference(x, conv)
    expected.backward(grad)
    expected_w, expected_b = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.Conv1PoolReLU.apply(x, conv.weight, conv.bias, LIB)
    out.backward(grad)

    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)  # same bf16 rounding, same winners
    # PyTorch's reference returns bf16 weight gradients; the kernel sums in fp32: equal to bf16 rounding.
    for got, ref in ((conv.weight.grad, expected_w), (conv.bias.grad, expected_b)):
        assert got.dtype == torch.float32
        assert (got - ref).norm() <= 1e-2 * ref.norm()


@needs_kernels
def test_first_block_kernel_only_where_it_applies():
    """A block on the c-one-pass path runs the kernel only inside bf16 autocast and when x needs no gradient; else
    PyTorch's conv (and the C pooling): the same function either way."""
    block = mv.modeling_minivision.MiniVisionConvBlock(1, 32, mv.MiniVisionConfig()).eval()
    fused = fast.FusedConvPoolReLUBlock(copy.deepcopy(block), fast.KernelPath.C_ONE_PASS, LIB).eval()
    assert fused.direct and not fused.winograd and "path=c-one-pass, conv=direct" in repr(fused)
    x = _digits(4)
    assert torch.equal(fused(x), block(x))  # fp32, no autocast: PyTorch's ops
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(x), block(x))  # the kernel: bit-identical forward
        wanted = x.clone().requires_grad_(True)
        fused(wanted).float().sum().backward()  # the kernel gives no input gradient: PyTorch's conv runs
    assert wanted.grad is not None
    with pytest.raises(ValueError, match="does not take"):
        fast.FusedConvPoolReLUBlock(mv.modeling_minivision.MiniVisionConvBlock(3, 8, mv.MiniVisionConfig()),
                                    fast.KernelPath.C_ONE_PASS, LIB)  # fmt: skip


@needs_kernels
def test_fused_model_trains_like_the_plain_model():
    """The fused model without Winograd: same state dict keys, same forward, loss and (to bf16 rounding) gradients,
    in bf16 autocast training with channels_last, as the fast path runs it."""
    plain = _model()
    fused = copy.deepcopy(plain)
    swapped = fast.swap.swap_blocks(fused, _plan(AVX512_BF16, winograd=False))
    assert [m.path for m in swapped.values()] == [fast.KernelPath.C_ONE_PASS, fast.KernelPath.TORCH_CONV_C_POOL]
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert type(fused.minivision.blocks[0]).__name__ == "FusedConvPoolReLUBlock"

    # Binary ink: on grey levels an output near zero after cancellation can round one bf16 ulp away from oneDNN's
    # (its fp32 sums run in another order; 1 of 200k outputs on _digits(32)), which the running means then show.
    x = (((torch.rand(32, 1, 28, 28) > 0.7).float() - 0.1307) / 0.3081).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (32,))
    results = []
    for model in (plain, fused):
        model.train()
        torch.manual_seed(1)  # the same dropout mask
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(pixel_values=x, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results
    assert torch.equal(logits_a, logits_b) and torch.equal(loss_a, loss_b)
    for name, grad in grads_a.items():
        assert (grads_b[name] - grad).norm() <= 2e-2 * grad.norm() + 1e-6, name
    for (name, a), b in zip(plain.named_buffers(), fused.buffers()):  # running statistics updated identically
        assert torch.equal(a, b), name


def _routed_reference(x, conv, code, grad):
    """fp64 conv + the pooling/ReLU routing the kernel chose (`code`): outputs, and x/w/b gradients for `grad`."""
    x64 = x.detach().double().requires_grad_(True)
    w64 = conv.weight.detach().to(torch.bfloat16).double().requires_grad_(True)
    b64 = conv.bias.detach().to(torch.bfloat16).double().requires_grad_(True)
    full = torch.nn.functional.conv2d(x64, w64, b64, padding=1)
    picked = torch.zeros_like(full)
    for p in range(4):  # the window input each output took (code p), or nothing where ReLU closed (code 4)
        picked[:, :, p >> 1 :: 2, p & 1 :: 2] = (code == p).double()
    pooled = (full * picked).unflatten(2, (-1, 2)).unflatten(4, (-1, 2)).sum((3, 5))
    pooled.backward(grad.double())
    return pooled.detach(), x64.grad, w64.grad, b64.grad


@needs_kernels
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "bmm"])
@pytest.mark.parametrize(
    ("shape", "out_channels", "chunk"), [((20, 32, 14, 14), 64, 32), ((5, 16, 6, 8), 32, 2), ((3, 48, 10, 10), 16, 2)]
)
def test_winograd_conv_pool_relu_matches_an_fp64_reference(one_pass, shape, out_channels, chunk):
    """Both Winograd paths: one pass (own AVX-512 BF16 products) and transforms + torch.bmm (in chunks of `chunk`
    images, the last one shorter). Shapes cover 64-, 32- and 16-column products and odd tile counts."""
    if one_pass and not LIB.one_pass_winograd:
        pytest.skip("the one-pass Winograd kernels need a library built for AVX-512 BF16")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], out_channels, 3, 1, 1)
    x = _channels_last(*shape, dtype=torch.bfloat16).requires_grad_(True)
    grad = _channels_last(shape[0], out_channels, shape[2] // 2, shape[3] // 2, dtype=torch.bfloat16, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.WinogradConvPoolReLU.apply(x, conv.weight, conv.bias, LIB, one_pass, chunk)
        reference = fast.conv_pool_relu_reference(x.detach(), conv)
    out.backward(grad)
    u = fast.winograd_weights(conv.weight.detach().to(torch.bfloat16).float()).to(torch.bfloat16)
    bias = conv.bias.detach().to(torch.bfloat16).float()
    y, code = fast.functions.winograd_forward(LIB, x.detach(), u, bias, one_pass, chunk)
    assert torch.equal(y, out) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)

    # Values: within bf16 rounding of the exact pooled conv, and of PyTorch's bf16 (oneDNN) result.
    expected, grad_x, grad_w, grad_b = _routed_reference(x, conv, code, grad)
    scale = expected.abs().max()
    assert (out.double() - expected).abs().max() <= 2e-2 * scale
    assert (out.double() - reference.double()).abs().max() <= 3e-2 * scale
    assert (code == 4).any() and (code < 4).any() and torch.equal(out == 0, code == 4)  # ReLU closed exactly there
    # Gradients through the same routing: to bf16 rounding.
    for got, ref in ((x.grad, grad_x), (conv.weight.grad, grad_w), (conv.bias.grad, grad_b)):
        assert (got.double() - ref).norm() <= 1e-2 * ref.norm()
    assert x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32


@needs_kernels
def test_winograd_only_where_it_applies():
    plan = _plan(AVX512_BF16)
    for other in (torch.nn.Conv2d(24, 64, 3, 1, 1), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.Conv2d(32, 64, 5, 1, 2)):
        assert fast.choose_block_path(other, plan) is fast.KernelPath.TORCH_CONV_C_POOL
    # On a Winograd path, outside bf16 autocast (or with odd sizes) the block runs PyTorch's conv: the same function.
    block = mv.modeling_minivision.MiniVisionConvBlock(32, 64, mv.MiniVisionConfig()).eval()
    fused = fast.FusedConvPoolReLUBlock(copy.deepcopy(block), fast.KernelPath.C_BMM, LIB).eval()
    assert fused.winograd and "path=c+bmm, conv=winograd" in repr(fused)
    z = _channels_last(2, 32, 14, 14)
    assert torch.equal(fused(z), block(z))
    odd = _channels_last(2, 32, 13, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused(odd), block(odd))
    with pytest.raises(ValueError, match="does not take"):
        fast.FusedConvPoolReLUBlock(mv.modeling_minivision.MiniVisionConvBlock(24, 40, mv.MiniVisionConfig()),
                                    fast.KernelPath.C_BMM, LIB)  # fmt: skip


@needs_kernels
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "bmm"])
def test_winograd_model_trains_like_the_plain_model(one_pass):
    """With the second block as Winograd, bf16 training stays as close to exact (fp64) arithmetic as PyTorch's own bf16
    autocast model: loss, logits and every gradient (bf16 alone is ~10% off in early-layer gradients here, because
    near-tied pooling windows route differently)."""
    if one_pass and not LIB.one_pass_winograd:
        pytest.skip("the one-pass Winograd kernels need a library built for AVX-512 BF16")
    plain = _model(dropout=0.0)  # no dropout: the same function on every side
    fused, exact = copy.deepcopy(plain), copy.deepcopy(plain).double()
    library = LIB if one_pass else _OnlyBmm(LIB)
    swapped = fast.swap.swap_blocks(fused, _plan(AVX512_BF16, library=library))
    assert [m.path for m in swapped.values()][1] is (fast.KernelPath.C_ONE_PASS if one_pass else fast.KernelPath.C_BMM)

    x, labels = _digits(64), torch.randint(0, 10, (64,))
    results = []
    for model in (plain, fused, exact):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model is not exact):
            out = model.train()(pixel_values=x.to(next(model.parameters()).dtype), labels=labels)
        out.loss.backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters()}
        results.append((out.logits.detach().double(), out.loss.detach().double(), grads))
    (logits_p, loss_p, grads_p), (logits_w, loss_w, grads_w), (logits_e, loss_e, grads_e) = results
    error = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert error(logits_w, logits_e) <= 1.5 * error(logits_p, logits_e) + 1e-2
    assert abs(loss_w - loss_e) <= 1.5 * abs(loss_p - loss_e) + 1e-2 * loss_e
    for name, exact_grad in grads_e.items():
        assert error(grads_w[name], exact_grad) <= 1.5 * error(grads_p[name], exact_grad) + 0.03, name


class _OnlyBmm:
    """This machine's library as one built without AVX-512 BF16 would be chosen: the c+bmm path, real kernels."""

    one_pass_winograd = False

    def __init__(self, library):
        self.call = library.call


def test_fast_dropout_has_dropouts_distribution():
    torch.manual_seed(0)
    drop = fast.FastDropout(0.3).train()
    x = torch.ones(1000, 1000, dtype=torch.bfloat16, requires_grad=True)
    y = drop(x)
    zeros = (y == 0).float().mean().item()
    assert abs(zeros - 0.3) < 0.005  # 1e6 draws: the standard error is ~5e-4
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-2) and y.dtype == torch.bfloat16
    y.float().sum().backward()  # the gradient passes through the kept elements only, scaled alike
    assert torch.equal(x.grad != 0, y != 0)
    assert torch.equal(drop.eval()(x), x) and torch.equal(fast.FastDropout(0.0).train()(x), x)


def test_fast_dropout_of_one_drops_everything_as_nn_dropout():
    x = torch.tensor([1.0, -2.0, float("inf"), float("nan")])
    assert _same(fast.FastDropout(1.0).train()(x), torch.nn.Dropout(1.0).train()(x))  # zeros (NaN for inf, NaN)


@needs_kernels
def test_apply_fast_kernels_keeps_the_state_dict_and_saved_files(tmp_path):
    model = mv.MiniVisionForImageClassification(mv.MiniVisionConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernels built: nothing to warn about
        report = fast.apply_fast_kernels(model)
    assert report["fused_blocks"] == 2 and report["fast_dropouts"] == 1
    assert report["winograd_blocks"] == 1  # bf16 one pass or c+bmm, fp32 c+bmm on AVX2-only CPUs: Winograd on each
    assert report["kernels_built"] and report["build_flags"] == " ".join(BUILD.target.flags)
    assert report["build_error"] is None
    assert any(isinstance(m, fast.FastDropout) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    copy.deepcopy(model)  # the library travels by reference
    model.save_pretrained(tmp_path)  # reloads as the plain model, with the same weights
    reloaded = mv.MiniVisionForImageClassification.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in before.items())


def test_kernel_sizes_are_passed_as_integers_under_jit_trace():
    """torch.jit.trace hands `x.shape` out as 0-dim tensors: the C sizes must be their values, never their data
    pointers (which ran the kernels over wild sizes: out of memory, or a segfault in the max-pool + ReLU). A traced
    fp32 model then computes what the plain one does."""
    calls = []

    class _Recorder:
        def __getattr__(self, name):
            return lambda *values: calls.append(values) or 0

    library = fast_build.KernelLibrary.__new__(fast_build.KernelLibrary)
    library._cdll = _Recorder()
    x = _channels_last(2, 16, 4, 6)
    library.call("mv_pool_relu_forward_f32", x=x, y=x, code=x, images=torch.tensor(2), height=torch.tensor(4),
                 width=torch.tensor(6), channels=torch.tensor(16), threads=torch.tensor(1))  # fmt: skip
    assert calls[0][3:] == (2, 4, 6, 16, 1) and calls[0][0] == x.data_ptr()
    if LIB is None:
        return
    plain = _model(dropout=0.0).eval()
    fused = copy.deepcopy(plain)
    report = fast.apply_fast_kernels(fused, bf16=False, capabilities=CAPS)
    assert _paths(report) == ["c-one-pass", "c+bmm"]
    x = _digits(8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in the kernels' checks
        traced = torch.jit.trace(fused, example_kwarg_inputs={"pixel_values": x}, strict=False)
        torch.testing.assert_close(traced(pixel_values=x)["logits"], plain(pixel_values=x).logits)


@needs_kernels
def test_apply_fast_kernels_twice_follows_the_second_plan():
    """A model swapped before (a notebook cell run again, a second preparation with other flags): every block is
    chosen again under the new plan (here fp32 after bf16), the report lists them, and the model computes what the
    plain model does."""
    plain = _model(dropout=0.0).eval()
    fused = copy.deepcopy(plain)
    first = fast.apply_fast_kernels(fused, bf16=True, capabilities=CAPS)
    second = fast.apply_fast_kernels(fused, bf16=False, capabilities=CAPS)
    assert first["fused_blocks"] == second["fused_blocks"] == 2 and second["fast_dropouts"] == 1
    assert second["precision"] == "fp32" and _paths(second) == ["c-one-pass", "c+bmm"]
    assert all(block["precision"] == "fp32" for block in second["blocks"].values())
    assert "precision=bf16" not in repr(fused)
    assert not any(m.training for m in fused.modules()) and list(fused.state_dict()) == list(plain.state_dict())
    x = _digits(8)
    with torch.no_grad():
        torch.testing.assert_close(fused(pixel_values=x).logits, plain(pixel_values=x).logits, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_a_float64_model_under_bf16_autocast_computes_in_float64():
    """Autocast leaves float64 tensors alone: a swapped model moved to float64 (an exact reference) computes in
    float64 inside bf16 autocast too, as the plain model does, instead of running the bf16 kernels."""
    plain = _model(dropout=0.0).eval().double()
    fused = copy.deepcopy(plain)
    fast.apply_fast_kernels(fused, bf16=True, capabilities=CAPS)
    x = _digits(8).double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(pixel_values=x).logits, plain(pixel_values=x).logits
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want)


@needs_kernels
def test_an_unpickled_model_holds_kernels_this_cpu_can_run(tmp_path, monkeypatch):
    """A pickled model (torch.save of the whole model) unpickled on a CPU without the features its library was built
    for (an AVX-512 library found in a shared NFS cache, on an AVX2-only machine: SIGILL), or where the file is gone,
    gets this CPU's own library; a one-pass Winograd block then runs as c+bmm, the same function."""
    model = _model(dropout=0.0).eval()
    fast.swap.swap_blocks(model, _plan(AVX512_BF16))
    data = pickle.dumps(model)
    assert pickle.loads(data).minivision.blocks[1].kernels is LIB  # this CPU: the same library
    assert fast_build._unpickle_library(tmp_path / "gone.so", BUILD.target) is LIB  # file gone: this CPU's own
    foreign = tmp_path / "minivision_kernels-x86-64-0123456789abcdef.so"  # another machine's: it needs no feature
    foreign.write_bytes(b"\x7fELF" + bytes(60))  # (an x86-64 baseline build, say, unpickled by an arm64 process)
    assert fast_build._unpickle_library(foreign, fast_build.BuildTarget("x86-64", frozenset(), ("-O3",))) is LIB

    other = _OnlyBmm(LIB)  # the library "an AVX2-only CPU" builds, standing in for one (the real kernels)
    monkeypatch.setattr(fast_build, "detect_capabilities", lambda: fast.Capabilities("x86_64", frozenset()))
    monkeypatch.setattr(fast_build, "load_kernels", lambda caps: fast.BuildResult(other, BUILD.target))
    unpickled = pickle.loads(data)
    assert all(block.kernels is other for block in unpickled.minivision.blocks)
    x = _digits(8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = unpickled(pixel_values=x).logits.float(), model(pixel_values=x).logits.float()
    assert (got - want).abs().max() <= 3e-2 * want.abs().max()


@needs_kernels
@pytest.mark.parametrize("tile", [2, 4], ids=["F2x2", "F4x4"])
def test_winograd_backward_reuses_the_forwards_input_transforms(tile):
    """The c+bmm forward keeps each chunk's input transform V for the backward (its dU products) instead of recomputing
    it there: the same gradients, bit for bit, as the recomputing backward (a last chunk shorter than the others)."""
    torch.manual_seed(0)
    x = _channels_last(5, 16, 6, 10)
    conv = torch.nn.Conv2d(16, 32, 3, 1, 1)
    u = fast.winograd_weights(conv.weight.detach(), tile)
    bias = conv.bias.detach()
    kept = []
    y, code = fast.functions.winograd_forward(LIB, x, u, bias, False, 2, tile, kept)
    tiles = -(-6 // tile) * -(-10 // tile)  # per image; F(4x4) rows end in a spare tile
    assert [v.shape[1] for v in kept] == [n * tiles + (tile == 4) for n in (2, 2, 1)]
    grad = _channels_last(5, 32, 3, 5, seed=1)
    again = fast.functions.winograd_backward(LIB, x, u, code, grad, True, False, 2, tile)
    reused = fast.functions.winograd_backward(LIB, x, u, code, grad, True, False, 2, tile, kept)
    for a, b in zip(again, reused, strict=True):
        assert torch.equal(a, b)
