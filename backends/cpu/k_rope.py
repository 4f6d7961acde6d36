"""(being written)"""


def rope(node, dst, *src):
    raise NotImplementedError
