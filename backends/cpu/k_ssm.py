"""(being written)"""


def ssm_conv(node, dst, *src):
    raise NotImplementedError


def gated_delta_net(node, dst, *src):
    raise NotImplementedError
