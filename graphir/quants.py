"""(being written) GGUF block formats."""


def dequantize_rows(raw, type):
    raise NotImplementedError


def quantize_rows(x, type):
    raise NotImplementedError
