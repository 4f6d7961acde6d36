"""Operand layouts shared by the reference-op tests: an op input as given, permuted, or a
view into a larger NaN-padded buffer (a kernel that reads outside the view sees NaN)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import graphir as gr


@st.composite
def layouts(draw) -> tuple:
    """("cont",), ("perm", axes) or ("view", pads, offsets): how an op input is laid out."""
    kind = draw(st.sampled_from(["cont", "perm", "view"]))
    if kind == "perm":
        return ("perm", tuple(draw(st.permutations(range(4)))))
    if kind == "view":
        pads = draw(st.tuples(*[st.integers(0, 2)] * 4))
        return ("view", pads, tuple(draw(st.integers(0, p)) for p in pads))
    return ("cont",)


def make_input(type, ne, layout, host: np.ndarray, rng=None) -> tuple[gr.Tensor, gr.Tensor, np.ndarray]:
    """An input `base`, the operand `t` (base or a view of it) whose logical value (numpy
    order) is `host`, and the data to feed base: NaN sentinels around a view, or random
    integers from `rng` where the type has no NaN (I32)."""
    if layout[0] == "perm":
        axes = layout[1]
        base = gr.new_input(type, [ne[axes[i]] for i in range(4)])
        return base, gr.permute(base, *axes), np.transpose(host, [3 - axes[3 - k] for k in range(4)])
    if layout[0] == "view":
        pads, offs = layout[1], layout[2]
        base = gr.new_input(type, [n + p for n, p in zip(ne, pads)])
        shape = tuple(reversed(base.ne))
        if rng is None:
            feed = np.full(shape, np.nan, dtype=host.dtype)  # must never be read
        else:
            feed = rng.integers(-100, 100, size=shape).astype(host.dtype)
        feed[tuple(slice(o, o + n) for o, n in zip(reversed(offs), reversed(ne)))] = host
        offset = sum(o * nb for o, nb in zip(offs, base.nb))
        return base, gr.view_4d(base, *ne, base.nb[1], base.nb[2], base.nb[3], offset), feed
    base = gr.new_input(type, ne)
    return base, base, host
