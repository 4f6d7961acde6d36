"""(being written)"""


def mul_mat(node, dst, *src):
    raise NotImplementedError


def mul_mat_id(node, dst, *src):
    raise NotImplementedError
