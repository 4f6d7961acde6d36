"""graphir: a compiled tensor graph IR mirroring ggml.

Build a graph with the op builders, `compile` it onto backends, run the plan:

    import graphir as gr
    x = gr.new_input(gr.F32, [4096, 8], "x")
    w = gr.from_numpy(weights, "w")
    y = gr.mul_mat(w, x)
    plan = gr.compile(gr.build_graph(y), ["cpu"])
    plan.set_input(x, data); plan.run(); out = plan.get(y)
"""

from .builders import *  # noqa: F403  (the op builders are the public API)
from .builders import BUILDERS, ShapeError
from .compile import Plan, compile, plan_cache
from .graph import Graph, build_forward_expand, build_graph
from .ops import Op
from .tensor import Flag, Tensor
from .types import DType, parse_type, row_size

F32, F16, BF16, I32 = DType.F32, DType.F16, DType.BF16, DType.I32
Q8_0, Q4_0, Q4_K, Q5_K, Q6_K = DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q5_K, DType.Q6_K

__version__ = "0.1.0"


def __getattr__(name: str):
    """`graphir.load` and `graphir.LLM` (models/facade.py), imported on first use: `import graphir`
    itself needs only numpy; the models need gguf, tokenizers and jinja2."""
    if name in ("load", "LLM"):
        from graphir.models import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'graphir' has no attribute {name!r}")
