"""Elementwise kernels (unary, binary with ggml broadcast, scale, clamp)."""

from __future__ import annotations

import numpy as np

from graphir.tensor import Tensor

from .common import as_f32, broadcast_src, store


def _binary(fn):
    def kernel(node: Tensor, dst: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        x = as_f32(a, node.src[0].type)
        y = broadcast_src(as_f32(b, node.src[1].type), x.shape)
        store(dst, fn(x, y), node.type)

    return kernel


def _unary(fn):
    def kernel(node: Tensor, dst: np.ndarray, a: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            store(dst, fn(as_f32(a, node.src[0].type), node), node.type)

    return kernel


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    # ggml: x above 20 passes through; log1p(exp(x)) otherwise
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0)))).astype(np.float32)


_GELU_C = np.float32(np.sqrt(2.0 / np.pi))


def _gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation, as ggml_gelu
    return (0.5 * x * (1.0 + np.tanh(_GELU_C * x * (1.0 + np.float32(0.044715) * x * x)))).astype(np.float32)


add = _binary(np.add)
sub = _binary(np.subtract)
mul = _binary(np.multiply)
div = _binary(np.divide)

sqr = _unary(lambda x, n: x * x)
sqrt = _unary(lambda x, n: np.sqrt(x))
exp = _unary(lambda x, n: np.exp(x))
neg = _unary(lambda x, n: -x)
sigmoid = _unary(lambda x, n: _sigmoid(x))
silu = _unary(lambda x, n: x * _sigmoid(x))
softplus = _unary(lambda x, n: _softplus(x))
gelu = _unary(lambda x, n: _gelu(x))
scale = _unary(lambda x, n: x * np.float32(n.params["s"]) + np.float32(n.params["b"]))
clamp = _unary(lambda x, n: np.clip(x, np.float32(n.params["min"]), np.float32(n.params["max"])))
