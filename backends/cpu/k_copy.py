"""(being written)"""


def cont(node, dst, *src):
    raise NotImplementedError


def cpy(node, dst, *src):
    raise NotImplementedError


def dup(node, dst, *src):
    raise NotImplementedError


def repeat(node, dst, *src):
    raise NotImplementedError


def get_rows(node, dst, *src):
    raise NotImplementedError


def set_rows(node, dst, *src):
    raise NotImplementedError


def concat(node, dst, *src):
    raise NotImplementedError
