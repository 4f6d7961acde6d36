"""(being written)"""


def sum_rows(node, dst, *src):
    raise NotImplementedError


def mean(node, dst, *src):
    raise NotImplementedError


def rms_norm(node, dst, *src):
    raise NotImplementedError


def l2_norm(node, dst, *src):
    raise NotImplementedError


def soft_max(node, dst, *src):
    raise NotImplementedError


def argmax(node, dst, *src):
    raise NotImplementedError


def argsort(node, dst, *src):
    raise NotImplementedError


def top_k(node, dst, *src):
    raise NotImplementedError
