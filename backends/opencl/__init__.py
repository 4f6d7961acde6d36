"""The OpenCL backend (pyopencl; kernels in shaders/opencl/*.cl). Importing it never fails
for a missing driver or package: `BACKEND.availability()` says why it cannot run."""

from .backend import OpenCLBackend

BACKEND = OpenCLBackend

__all__ = ["BACKEND", "OpenCLBackend"]
