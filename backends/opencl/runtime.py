"""Device selection and the program cache of the OpenCL backend.

GRAPHIR_OPENCL_DEVICE picks the device: an index into the list of every platform's devices,
or a substring of a device (or platform) name. Default: the first device.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

try:
    import pyopencl as cl
except ImportError:  # the backend reports itself unavailable
    cl = None

from graphir import debug

ENV_DEVICE = "GRAPHIR_OPENCL_DEVICE"


def shader_dir() -> Path:
    return Path(str(resources.files("graphir.shaders") / "opencl"))


def all_devices() -> list:
    """(platform, device) pairs of every OpenCL platform; [] when there is no platform."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # ocl-icd raises when no ICD is installed
        return []
    out = []
    for p in platforms:
        try:
            out += [(p, d) for d in p.get_devices()]
        except cl.Error:  # a platform without devices
            continue
    return out


def select_device():
    """The chosen device, or a string saying why none can be used."""
    if cl is None:
        return "pyopencl is not installed (pip install 'graphir[opencl]')"
    devices = all_devices()
    if not devices:
        return "no OpenCL platform/device found (install an ICD, e.g. Debian's pocl-opencl-icd)"
    want = os.environ.get(ENV_DEVICE, "").strip()
    if not want:
        return devices[0][1]
    if want.isdigit():
        i = int(want)
        return devices[i][1] if i < len(devices) else f"{ENV_DEVICE}={want}: only {len(devices)} devices"
    for p, d in devices:
        if want.lower() in d.name.lower() or want.lower() in p.name.lower():
            return d
    names = ", ".join(d.name for _, d in devices)
    return f"{ENV_DEVICE}={want!r} matches no device (have: {names})"


def fine_grain_svm(dev) -> bool:
    """Whether the device shares fine-grained buffer SVM with the host (OpenCL 2.0+)."""
    try:
        return bool(dev.svm_capabilities & cl.device_svm_capabilities.FINE_GRAIN_BUFFER)
    except (cl.Error, AttributeError):  # an OpenCL 1.x device or platform
        return False


class Programs:
    """Built programs keyed by (shader file, defines); PoCL also caches binaries on disk."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self._cache: dict[tuple[str, tuple[str, ...]], object] = {}

    def kernel(self, file: str, name: str, defines: dict[str, object] | None = None):
        """A new kernel object (each prepared call owns its arguments) of a cached program."""
        opts = tuple(f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted((defines or {}).items()))
        key = (file, opts)
        prg = self._cache.get(key)
        if prg is None:
            src = (shader_dir() / file).read_text()
            if debug.enabled(debug.KERNELS):
                debug.log(debug.KERNELS, f"[opencl] build {file} {' '.join(opts)}\n{src}")
            prg = cl.Program(self.ctx, src).build(options=["-I", str(shader_dir()), *opts])
            self._cache[key] = prg
        return cl.Kernel(prg, name)
