"""The C build: compile csrc/*.c for a named ISA level with the system's C compiler, cache the library, load it with
ctypes and give it the signature table that mirrors csrc/minivision_kernels.h.

No library built for one CPU is ever loaded on another: a build targets the ISA level the CPU was detected to have
(`Capabilities.isa_level`, e.g. `-march=x86-64-v4 -mavx512bf16`, never `-march=native`), and the cache file's name
holds a key over the sources, the compiler, the flags and the features that level needs. A CPU looks only for its
own level's key, so a cache folder shared between machines (an NFS home, a container image) holds one library per
level side by side (one that cannot be written, read-only or another user's, is read, and what is missing there is
built in this user's folder in the temp folder instead). Where the compiler refuses the level's flags, the fallback
build uses the compiler's default target and is keyed by the CPU's full feature set instead.

Flag sets are tried in order: the level's flags with OpenMP (the kernels run on torch's own OpenMP threads), without
OpenMP (single-threaded, e.g. Apple clang), then the compiler's default target, with and without OpenMP. Without a
compiler, or when nothing builds, `load_kernels` returns a `BuildResult` with the reason and no library: the fast path
then runs PyTorch's ops.
"""

import ctypes
import functools
import hashlib
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .capabilities import ISA_LEVELS, Capabilities, detect_capabilities

CSRC = Path(__file__).with_name("csrc")
HEADER = CSRC / "minivision_kernels.h"
OPTIMIZE = ("-O3",)
OPENMP = ("-fopenmp",)
COMPILER_DEFAULT = "compiler-default"  # the fallback build's level: whatever the compiler targets by default

# The exported functions of csrc/minivision_kernels.h: name -> (return type, [(parameter, C type)]), in the header's
# order and spelling (tests/test_fast_kernels.py parses the header and checks this table against it).
SIGNATURES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "mv_pool_relu_forward_bf16": ("int", [
        ("x", "const uint16_t *"), ("y", "uint16_t *"), ("code", "uint16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_pool_relu_forward_f32": ("int", [
        ("x", "const float *"), ("y", "float *"), ("code", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_pool_relu_backward_bf16": ("int", [
        ("grad_y", "const uint16_t *"), ("code", "const uint16_t *"), ("grad_x", "uint16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_pool_relu_backward_f32": ("int", [
        ("grad_y", "const float *"), ("code", "const float *"), ("grad_x", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_conv1_pool_relu_forward": ("int", [
        ("x", "const uint16_t *"), ("taps", "const float *"), ("bias", "const float *"), ("y", "uint16_t *"),
        ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_conv1_pool_relu_backward": ("int", [
        ("x", "const uint16_t *"), ("grad_y", "const uint16_t *"), ("code", "const int16_t *"),
        ("grad_taps", "float *"), ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_conv1_pool_relu_forward_f32": ("int", [
        ("x", "const float *"), ("taps", "const float *"), ("bias", "const float *"), ("y", "float *"),
        ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_conv1_pool_relu_backward_f32": ("int", [
        ("x", "const float *"), ("grad_y", "const float *"), ("code", "const int16_t *"),
        ("grad_taps", "float *"), ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_input_transform": ("int", [
        ("x", "const uint16_t *"), ("v", "uint16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_output_pool_relu": ("int", [
        ("m", "const uint16_t *"), ("bias", "const float *"), ("y", "uint16_t *"), ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_output_pool_relu_backward": ("int", [
        ("grad_y", "const uint16_t *"), ("code", "const int16_t *"), ("grad_m", "uint16_t *"),
        ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_input_transform_backward": ("int", [
        ("grad_v", "const uint16_t *"), ("grad_x", "uint16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_input_transform_f32": ("int", [
        ("x", "const float *"), ("v", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_output_pool_relu_f32": ("int", [
        ("m", "const float *"), ("bias", "const float *"), ("y", "float *"), ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_output_pool_relu_backward_f32": ("int", [
        ("grad_y", "const float *"), ("code", "const int16_t *"), ("grad_m", "float *"), ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_input_transform_backward_f32": ("int", [
        ("grad_v", "const float *"), ("grad_x", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd4x4_input_transform_f32": ("int", [
        ("x", "const float *"), ("v", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd4x4_output_pool_relu_f32": ("int", [
        ("m", "const float *"), ("bias", "const float *"), ("y", "float *"), ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd4x4_output_pool_relu_backward_f32": ("int", [
        ("grad_y", "const float *"), ("code", "const int16_t *"), ("grad_m", "float *"), ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd4x4_input_transform_backward_f32": ("int", [
        ("grad_v", "const float *"), ("grad_x", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("channels", "long"), ("threads", "int"),
    ]),
    "mv_winograd_one_pass_built": ("int", []),
    "mv_winograd_one_pass_forward": ("int", [
        ("x", "const uint16_t *"), ("weight_pairs", "const uint32_t *"), ("bias", "const float *"),
        ("y", "uint16_t *"), ("code", "int16_t *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("in_channels", "long"), ("out_channels", "long"),
        ("threads", "int"),
    ]),
    "mv_winograd_one_pass_backward": ("int", [
        ("x", "const uint16_t *"), ("weight_pairs_t", "const uint32_t *"), ("grad_y", "const uint16_t *"),
        ("code", "const int16_t *"), ("grad_x", "uint16_t *"), ("grad_u", "float *"), ("grad_bias", "float *"),
        ("images", "long"), ("height", "long"), ("width", "long"), ("in_channels", "long"), ("out_channels", "long"),
        ("threads", "int"),
    ]),
    "mv_build_key": ("int", [("key", "char *"), ("size", "long")]),
}  # fmt: skip
CTYPES = {"int": ctypes.c_int, "long": ctypes.c_long}  # every pointer is passed as c_void_p (a tensor's data_ptr())
STATUS = {1: "out of memory", 2: "unsupported shape", -1: "not built at this ISA level"}  # the header's return codes


def cache_dir() -> Path:
    """Where built libraries are kept: $MINIVISION_CACHE, else $XDG_CACHE_HOME, else ~/.cache, else (no home folder:
    a container's user without one) the temp folder; then minivision_hf/."""
    root = os.environ.get("MINIVISION_CACHE") or os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = Path.home() / ".cache"
        except RuntimeError:  # "Could not determine home directory"
            return temp_cache_dir()
    return Path(root) / "minivision_hf"


def temp_cache_dir() -> Path:
    """The temp folder's cache for this user: where there is no home folder, or cache_dir() cannot be written.

    The shared temp folder is writable by everyone, so its per-user folder is made private (0700) and used only when
    it is a real folder of this user's that no one else can write to; else (planted by another user, a link) a fresh
    private folder of this process's is used, so no library that another user put there is ever loaded."""
    user = os.getuid() if hasattr(os, "getuid") else None
    top = Path(tempfile.gettempdir()) / f"minivision-cache-{user if user is not None else 0}"
    try:
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = top.lstat()
        private = stat.S_ISDIR(info.st_mode) and (user is None or (info.st_uid == user and not info.st_mode & 0o022))
    except OSError:
        private = False
    return (top if private else _private_temp_dir()) / "minivision_hf"


@functools.cache
def _private_temp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="minivision-cache-"))  # 0700, new: this process's own


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def compiler_error(output: str, limit: int = 300) -> str:
    """The part of a failed build's output that says why, at most `limit` characters: its error lines (a linker's
    "No space left on device" comes after pages of warnings), else its end."""
    errors = [line.strip() for line in output.splitlines()
              if any(word in line.lower() for word in ("error", "fatal", "failed", "cannot", "no space"))]  # fmt: skip
    return " / ".join(errors)[:limit] if errors else output.strip()[-limit:]


def sources() -> list[Path]:
    """The C files compiled into the library (headers are hashed into the key too)."""
    return sorted(CSRC.glob("*.c"))


def find_compiler() -> str | None:
    """$CC, else gcc, cc or clang: the first one on PATH. $CC may be a command with words ("ccache gcc", "zig cc")."""
    candidates = (os.environ.get("CC"), "gcc", "cc", "clang")
    return next((c for c in candidates if c and c.strip() and shutil.which(compiler_command(c)[0])), None)


def compiler_command(compiler: str) -> list[str]:
    """The compiler as a command line's start: the whole string where it names a program (a Windows path with spaces),
    else its words ("ccache gcc", "zig cc": $CC as make takes it)."""
    return [compiler] if shutil.which(compiler) else shlex.split(compiler, posix=os.name != "nt")


@functools.cache
def compiler_identity(compiler: str) -> str:
    """The compiler's resolved path (and words) and `--version` line: a different compiler makes a different
    library."""
    command = compiler_command(compiler)
    try:
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{' '.join([str(shutil.which(command[0])), *command[1:]])} {version.splitlines()[0] if version else ''}"


@dataclass(frozen=True)
class BuildTarget:
    """One way to build the library: the ISA level it targets, the CPU features it may use, the compiler flags."""

    level: str
    features: frozenset[str]
    flags: tuple[str, ...]


def build_targets(capabilities: Capabilities) -> list[BuildTarget]:
    """The flag sets to try for this CPU, in order (see the module docstring)."""
    targets = []
    if capabilities.isa_level in ISA_LEVELS:
        needs, level_flags = ISA_LEVELS[capabilities.isa_level]
        for openmp in (OPENMP, ()):
            targets.append(BuildTarget(capabilities.isa_level, needs, (*OPTIMIZE, *level_flags, *openmp)))
    # The compiler's default target may be above the baseline (some distributions default to x86-64-v2): keyed by
    # everything this CPU has, so only a CPU with the same features loads it.
    for openmp in (OPENMP, ()):
        targets.append(BuildTarget(COMPILER_DEFAULT, capabilities.cpu_features, (*OPTIMIZE, *openmp)))
    return targets


def cache_key(target: BuildTarget, compiler_id: str, machine: str) -> str:
    """A key over everything that makes a library different: sources and headers, compiler, flags, the level and the
    CPU features the build may use, the machine."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (compiler_id, " ".join(target.flags), target.level, " ".join(sorted(target.features)), machine):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def file_key(path: Path) -> str:
    """The cache key in a library file's name (minivision_kernels-<level>-<key>.so), "" for another name."""
    match = re.fullmatch(r"minivision_kernels-.+-([0-9a-f]{16})", Path(path).stem)
    return match.group(1) if match else ""


def library_path(target: BuildTarget, compiler_id: str, machine: str) -> Path:
    """The cache file for `target`: minivision_kernels-<level>-<key>.so (the level in the name is for readers)."""
    return cache_dir() / f"minivision_kernels-{target.level}-{cache_key(target, compiler_id, machine)}.so"


class KernelLibrary:
    """The loaded C kernels, called by name with named arguments that must match SIGNATURES (tensors are passed as
    their data pointers, None as NULL, `threads` defaults to torch's thread count). Copies and pickles of a module
    holding one share the same loaded library; a pickle unpickled on a CPU without the features the library was built
    for, or where its file is gone, gets this CPU's own library (`_unpickle_library`)."""

    def __init__(self, path: Path, target: BuildTarget):
        self.path, self.target = path, target
        if _cut_short(path):  # dlopen would map it and the process die of SIGBUS at the first page past its end
            raise OSError(f"{path.name} is cut short (a killed copy, a full disk)")
        self._cdll = ctypes.CDLL(str(path))
        try:
            for name, (restype, params) in SIGNATURES.items():
                try:
                    function = getattr(self._cdll, name)
                except AttributeError as err:  # built without exports (hidden visibility; clang for MSVC: none)
                    raise OSError(f"{path.name} does not export {name}: {err}") from err
                function.restype = CTYPES[restype]
                function.argtypes = [CTYPES.get(ctype, ctypes.c_void_p) for _, ctype in params]
            built, expected = self.build_key(), file_key(path)
            if built != expected:  # a copy of another build (another CPU's level, another compiler's) under this name
                raise OSError(f"{path.name} was built under key {built or '(none)'}, not {expected or '(none)'}")
        except OSError:
            _unload(self._cdll)  # else the rebuilt file at this path would be handed the same stale handle
            raise
        self.one_pass_winograd = bool(self._cdll.mv_winograd_one_pass_built())

    def build_key(self) -> str:
        """The cache key the library was built under (`file_key` of the name build.py gave it)."""
        key = ctypes.create_string_buffer(64)
        if self._cdll.mv_build_key(ctypes.addressof(key), len(key)):
            raise OSError(f"{self.path.name}: its build key does not fit {len(key)} bytes")
        return key.value.decode("ascii", "replace")

    def call(self, name: str, **arguments) -> None:
        """Run the C function `name`; raises RuntimeError with the header's meaning of a nonzero status."""
        _, params = SIGNATURES[name]
        arguments.setdefault("threads", torch.get_num_threads())
        names = [param for param, _ in params]
        if sorted(arguments) != sorted(names):
            raise TypeError(f"{name} takes ({', '.join(names)}), got ({', '.join(arguments)})")
        values = [_c_value(arguments[param], ctype) for param, ctype in params]
        status = getattr(self._cdll, name)(*values)
        if status:
            raise RuntimeError(f"{name} failed: {STATUS.get(status, f'status {status}')}")

    def __repr__(self) -> str:
        return f"KernelLibrary({self.path.name}, flags={' '.join(self.target.flags)!r})"

    def __deepcopy__(self, memo: dict) -> "KernelLibrary":
        return self  # read-only once loaded: a deep-copied model keeps calling the same library

    def __reduce__(self):
        return _unpickle_library, (self.path, self.target)


def _unload(cdll: ctypes.CDLL) -> None:
    """Close a library this process will not use: the loader hands a later load of the same path the library it
    already holds, not the file now there."""
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(cdll._handle)


def _cut_short(path: Path) -> bool:
    """Whether `path` is an ELF file that ends before its program segments or section headers do (truncated); other
    formats are left to the loader."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    if len(data) < 64:  # cut inside the ELF header itself
        return True
    if data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    order, wide = "<" if data[5] == 1 else ">", data[4] == 2  # little / big endian; 64 / 32 bits
    header = "QQ6xHHHH" if wide else "II6xHHHH"  # e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum
    ph_off, sh_off, ph_size, ph_num, sh_size, sh_num = struct.unpack_from(order + header, data, 0x20 if wide else 0x1C)
    ends = [sh_off + sh_size * sh_num, ph_off + ph_size * ph_num]
    for i in range(ph_num):  # each segment's file bytes: (p_offset, p_filesz)
        at = ph_off + i * ph_size
        if at + ph_size <= len(data):
            offset, size = struct.unpack_from(order + ("8xQ16xQ" if wide else "4xI8xI"), data, at)
            ends.append(offset + size)
    return max(ends) > len(data)


def _c_value(value, ctype: str):
    if ctype in CTYPES:  # a size: under torch.jit.trace `x.shape` gives 0-dim tensors, never their data pointers
        return int(value)
    if isinstance(value, torch.Tensor):
        return value.data_ptr()
    return value  # None for NULL


@functools.cache
def _load_library(path: Path, target: BuildTarget) -> KernelLibrary:
    return KernelLibrary(path, target)


def _unpickle_library(path: Path, target: BuildTarget) -> KernelLibrary:
    """A pickled library, in the process that unpickles it: the same file where this CPU has every feature it was
    built for and it loads; else (another CPU: a model pickled on an AVX-512 machine, its file found in a shared cache
    folder, would stop at its first AVX-512 instruction here; another machine: an x86-64 baseline build needs no
    feature, yet an arm64 process cannot load it, e.g. one pickled under Rosetta on the same Mac; or the file is gone)
    the library built for this CPU."""
    if target.features <= detect_capabilities().cpu_features and path.exists():
        try:
            return _load_library(path, target)
        except OSError:  # another architecture's or operating system's library
            pass
    build = load_kernels(detect_capabilities())
    if build.library is None:
        raise RuntimeError(f"unpickling a model with the fast kernels of {path.name}: {build.error}")
    return build.library


@dataclass(frozen=True)
class BuildResult:
    """What `load_kernels` did: the library (None when nothing built), the target it was built for, and why not."""

    library: KernelLibrary | None
    target: BuildTarget | None = None
    error: str | None = None
    attempts: list[str] = field(default_factory=list)

    @property
    def flags(self) -> str | None:
        return " ".join(self.target.flags) if self.target else None


def _load_cached(path: Path, target: BuildTarget) -> KernelLibrary | None:
    """The library cached at `path`, or None where there is none or it does not load."""
    if not path.exists():
        return None
    try:
        return _load_library(path, target)
    except OSError:
        return None


def _compile(compiler: str, target: BuildTarget, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        command = [*compiler_command(compiler), *target.flags, "-shared", "-fPIC", f"-I{CSRC}",
                   f"-DMINIVISION_BUILD_KEY={file_key(path)}", *map(str, sources()), "-o", str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(out, path)  # atomic: concurrent builders (torchrun ranks) each write a whole file


@functools.cache
def load_kernels(capabilities: Capabilities) -> BuildResult:
    """The C kernels for a CPU with `capabilities`, built on first use into cache_dir() (once per process and
    capability set). Pass the detected capabilities: a library built for a level this CPU lacks would crash it."""
    compiler = find_compiler()
    if compiler is None:
        return BuildResult(None, error="no C compiler found ($CC, gcc, cc or clang)")
    identity = compiler_identity(compiler)
    attempts = []
    for target in build_targets(capabilities):
        path = library_path(target, identity, capabilities.machine)
        try:
            library = _load_cached(path, target)
            if library is None and not _writable(path.parent):  # a read-only cache folder, or another user's
                path = temp_cache_dir() / path.name
                library = _load_cached(path, target)
            if library is None:  # none yet, or one that does not load (truncated, a disk error): replaced whole
                _compile(compiler, target, path)
                library = _load_library(path, target)
            return BuildResult(library, target, attempts=attempts)
        except (OSError, subprocess.CalledProcessError) as err:
            attempts.append(f"{' '.join(target.flags)}: {compiler_error(getattr(err, 'stderr', '') or str(err))}")
    return BuildResult(None, error=f"building the fast kernels with {compiler} failed: " + " | ".join(attempts))
