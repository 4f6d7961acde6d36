"""GLSL -> SPIR-V: `glslc` at first use of a (shader, defines) variant, cached on disk by a hash
of the sources (the .comp and every header it includes), the defines and the compiler, so a
variant is compiled once per machine and never on the per-token path (lowering asks for it).

Cache: $GRAPHIR_CACHE/vulkan, else $XDG_CACHE_HOME/graphir/vulkan, else ~/.cache/graphir/vulkan.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

from graphir import debug

TARGET_ENV = "vulkan1.1"  # SPIR-V 1.3: what every Vulkan 1.1 device (lavapipe included) takes
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def shader_dir() -> Path:
    return Path(str(resources.files("graphir.shaders") / "vulkan"))


def cache_dir() -> Path:
    if os.environ.get("GRAPHIR_CACHE"):
        base = Path(os.environ["GRAPHIR_CACHE"]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "graphir"
    return base / "vulkan"


def glslc() -> str | None:
    return shutil.which("glslc")


@cache
def glslc_version() -> str:
    exe = glslc()
    if exe is None:
        return ""
    return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()


def sources_of(file: str, src: str | None = None, root: Path | None = None) -> list[tuple[str, str]]:
    """(name, text) of a shader and every header it includes, recursively, in include order."""
    root = root or shader_dir()
    seen: list[tuple[str, str]] = []

    def walk(name: str, text: str) -> None:
        if any(n == name for n, _ in seen):
            return
        seen.append((name, text))
        for inc in _INCLUDE.findall(text):
            walk(inc, (root / inc).read_text())

    walk(file, src if src is not None else (root / file).read_text())
    return seen


def define_args(defines: dict[str, object]) -> list[str]:
    return [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defines.items())]


def compile_spirv(file: str, defines: dict[str, object], src: str | None = None) -> bytes:
    """SPIR-V of shader `file` (or of `src`, its text, e.g. a mutated copy) with `defines`.

    Raises RuntimeError with glslc's messages when the source does not compile."""
    exe = glslc()
    if exe is None:
        raise RuntimeError("[vulkan] glslc not found on PATH (install Debian's glslc)")
    srcs = sources_of(file, src)
    args = ["-fshader-stage=compute", f"--target-env={TARGET_ENV}", "-O", *define_args(defines)]
    h = hashlib.sha256("\0".join([glslc_version(), *args, *(f"{n}\0{t}" for n, t in srcs)]).encode()).hexdigest()
    out = cache_dir() / f"{Path(file).stem}-{h[:24]}.spv"
    if out.exists():
        return out.read_bytes()
    if debug.enabled(debug.KERNELS):
        debug.log(debug.KERNELS, f"[vulkan] glslc {file} {' '.join(define_args(defines))}\n{srcs[0][1]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # compile from a copy so that a mutated source still finds the real headers
        path = Path(tmp) / file
        path.write_text(srcs[0][1])
        res = subprocess.run([exe, *args, "-I", str(shader_dir()), str(path), "-o", str(path) + ".spv"],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"[vulkan] glslc failed on {file} {' '.join(define_args(defines))}:\n{res.stderr}")
        code = Path(str(path) + ".spv").read_bytes()
    part = out.with_suffix(f".{os.getpid()}.part")
    part.write_bytes(code)
    os.replace(part, out)  # atomic: concurrent processes never read half a file
    return code


def validate(code: bytes) -> str | None:
    """spirv-val's complaint about a module, or None when it is valid (or spirv-val is absent)."""
    exe = shutil.which("spirv-val")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".spv") as f:
        f.write(code)
        f.flush()
        res = subprocess.run([exe, "--target-env", TARGET_ENV, f.name], capture_output=True, text=True)
    return None if res.returncode == 0 else (res.stderr or res.stdout).strip()
