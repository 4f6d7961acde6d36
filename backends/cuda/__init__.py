"""The CUDA backend (pycuda; kernels in shaders/cuda/*.cu, compiled with nvcc to cubins for
sm_80 and sm_90 plus PTX). Importing it never fails for a missing driver or package:
`BACKEND.availability()` says why it cannot run."""

from .backend import CUDABackend

BACKEND = CUDABackend

__all__ = ["BACKEND", "CUDABackend"]
