"""CUDA C -> cubin: nvcc at first use of a source, once per architecture, cached on disk by a hash
of the source (with the shared header), the flags and the architecture. Each source is compiled
for sm_80 and sm_90 (cubins) plus compute_90 PTX for newer GPUs, which the driver JIT-compiles.
ptxas' -v report (registers, spills, shared memory per kernel) is kept next to each cubin.

Cache: $GRAPHIR_CACHE/cuda, else $XDG_CACHE_HOME/graphir/cuda, else ~/.cache/graphir/cuda.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from graphir import debug

from ..base import default_threads

ARCHS = ("sm_80", "sm_90")  # cubins; PTX_ARCH covers the rest
PTX_ARCH = "compute_90"
HEADER = "common.cuh"
# -fmad=false: float results operation by operation as the reference (kernels ask for fmaf
# where they want it); warnings are errors (ptxas' included)
FLAGS = ("-O3", "-std=c++17", "-fmad=false", "-Werror", "all-warnings", "-Xptxas", "-v")


def shader_dir() -> Path:
    return Path(str(resources.files("graphir.shaders") / "cuda"))


def sources() -> list[Path]:
    """Every kernel source (one per op family)."""
    return sorted(shader_dir().glob("*.cu"))


def cache_dir() -> Path:
    if os.environ.get("GRAPHIR_CACHE"):
        base = Path(os.environ["GRAPHIR_CACHE"]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "graphir"
    return base / "cuda"


@cache
def nvcc() -> str | None:
    """The nvcc executable (PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin), or None."""
    found = shutil.which("nvcc")
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and root and Path(root, "bin", "nvcc").exists():
            found = str(Path(root, "bin", "nvcc"))
    return found


def source_hash(src: Path, arch: str) -> str:
    h = hashlib.sha256()
    for part in (src.read_bytes(), (src.parent / HEADER).read_bytes(), " ".join(FLAGS).encode(), arch.encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class Compiled:
    """A compiled source: the cubin (or PTX text) and ptxas' -v report (empty for PTX)."""

    source: Path
    arch: str
    binary: Path
    report: str


def cached_path(src: Path, arch: str) -> Path:
    ext = "ptx" if arch.startswith("compute_") else "cubin"
    return cache_dir() / f"{src.stem}-{source_hash(src, arch)}-{arch}.{ext}"


def is_cached(src: Path, arch: str) -> bool:
    return cached_path(src, arch).exists()


def compile_source(src: Path, arch: str) -> Compiled:
    """The cached build of src for arch (an sm_XY cubin or compute_XY PTX), compiling if needed.
    Raises RuntimeError with nvcc's output when compilation fails."""
    out = cached_path(src, arch)
    log = out.with_suffix(out.suffix + ".log")
    if out.exists() and log.exists():
        return Compiled(src, arch, out, log.read_text())
    exe = nvcc()
    if exe is None:
        raise RuntimeError("[cuda] nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = ["-ptx", f"-arch={arch}"] if arch.startswith("compute_") else ["-cubin", f"-arch={arch}"]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [exe, *kind, *FLAGS, "-I", str(src.parent), "-o", str(tmp_out), str(src)]
        if debug.enabled(debug.KERNELS):
            debug.log(debug.KERNELS, f"[cuda] {' '.join(cmd)}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"[cuda] nvcc failed for {src.name} ({arch}):\n{r.stdout}{r.stderr}")
        log_text = r.stdout + r.stderr
        Path(tmp, "log").write_text(log_text)
        os.replace(tmp_out, out)  # atomic: concurrent builders agree on the result
        os.replace(Path(tmp, "log"), log)
    return Compiled(src, arch, out, log_text)


def compile_all(archs: tuple[str, ...] = (*ARCHS, PTX_ARCH), jobs: int | None = None) -> list[Compiled]:
    """Every source for every arch, compiled in parallel (cached builds are free)."""
    todo = [(s, a) for s in sources() for a in archs]
    with ThreadPoolExecutor(max_workers=jobs or default_threads()) as pool:
        return list(pool.map(lambda sa: compile_source(*sa), todo))


def all_cached(archs: tuple[str, ...] = ARCHS) -> bool:
    return all(is_cached(s, a) for s in sources() for a in archs)


# ---- ptxas' report ---------------------------------------------------------------------


@dataclass(frozen=True)
class KernelStats:
    """One kernel's ptxas -v figures for one architecture."""

    kernel: str
    arch: str
    registers: int
    stack: int  # bytes of stack frame (local memory)
    spill_stores: int
    spill_loads: int
    smem: int  # bytes of static shared memory


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_report(text: str) -> list[KernelStats]:
    """The per-kernel figures of a ptxas -v report."""
    out, cur = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"kernel": m[1], "arch": m[2], "stack": 0, "spill_stores": 0, "spill_loads": 0}
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            cur.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        m = _USED.search(line)
        if m:
            s = _SMEM.search(line)
            out.append(KernelStats(registers=int(m[1]), smem=int(s[1]) if s else 0, **cur))
            cur = None
    return out


# ---- kernel signatures -----------------------------------------------------------------

# a kernel parameter's C type -> its code in a launch layout (kernels.py LAYOUT)
PARAM_CODES = {"Tensor": "T", "const Tensor": "T", "float": "f", "int": "i", "const float *": "P"}
_KERNEL = re.compile(r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)', re.S)


def kernel_signatures(src: str) -> dict[str, str]:
    """kernel name -> the layout codes of its parameters, from the `extern "C" __global__` signatures.
    A parameter type outside PARAM_CODES is '?' (never equal to what a launcher packs)."""
    out = {}
    for m in _KERNEL.finditer(src):
        codes = []
        for p in m[2].split(","):
            p = " ".join(p.split())
            ctype = re.sub(r"\s*\w+$", "", p).replace(" *", " *").strip()
            if ctype.endswith("*") and not ctype.endswith(" *"):
                ctype = ctype[:-1].strip() + " *"
            codes.append(PARAM_CODES.get(ctype, "?"))
        out[m[1]] = "".join(codes)
    return out


@cache
def kernel_files() -> dict[str, str]:
    """kernel name -> the source file (stem) that defines it."""
    out = {}
    for src in sources():
        for name in kernel_signatures(src.read_text()):
            out[name] = src.stem
    return out
