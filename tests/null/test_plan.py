"""Plans: the cache (same key -> same plan, no recompile; a rebuilt graph is bound to the
cached plan), addressing by tensor and by name, the eval callback, and compile's errors."""

from __future__ import annotations

import numpy as np
import pytest

import graphir as gr
from graphir import backends
from graphir.backends import BackendUnavailable
from graphir.ops import VIEW_OPS

F32 = gr.F32
N = 8
W = np.linspace(-1, 1, N, dtype=np.float32)  # one weight array: weights are keyed by their data


def build(n: int = N, s: float = 0.5, w: np.ndarray = W) -> gr.Graph:
    """out = scale(silu(x + b) * w, s); side = sigmoid(transpose(silu(x + b)))."""
    x = gr.new_input(F32, [n, 3], "x")
    b = gr.new_input(F32, [n, 1], "b")
    h = gr.silu(gr.add(x, b)).set_name("h")
    out = gr.scale(gr.mul(h, gr.from_numpy(w if n == len(w) else np.resize(w, n), "w")), s).set_name("out")
    side = gr.sigmoid(gr.transpose(h)).set_name("side")
    return gr.build_graph(out, side)


def reference(x: np.ndarray, b: np.ndarray, s: float = 0.5) -> dict[str, np.ndarray]:
    """The same values with numpy (numpy order: (1, 1, 3, N))."""
    x64, b64 = x.astype(np.float64), b.astype(np.float64)
    h = (x64 + b64) / (1 + np.exp(-(x64 + b64)))
    return {
        "h": h,
        "out": h * W.astype(np.float64) * s,
        "side": 1 / (1 + np.exp(-np.swapaxes(h, -1, -2))),
    }


def data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, 1, 3, N)).astype(np.float32), rng.standard_normal((1, 1, 1, N)).astype(np.float32))


def run(plan: gr.Plan, g: gr.Graph, seed: int) -> dict[str, np.ndarray]:
    x, b = data(seed)
    plan.set_input(g.find("x"), x)
    plan.set_input(g.find("b"), b)
    plan.run()
    return reference(x, b)


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- the cache ------------------------------------------------------------------------


def test_same_graph_returns_the_cached_plan() -> None:
    g = build()
    hits, misses = gr.plan_cache.hits, gr.plan_cache.misses
    p1 = gr.compile(g, ["cpu"])
    assert (gr.plan_cache.hits, gr.plan_cache.misses) == (hits, misses + 1)
    p2 = gr.compile(g, ["cpu"])
    assert p2 is p1
    assert (gr.plan_cache.hits, gr.plan_cache.misses) == (hits + 1, misses + 1)


def test_rebuilt_graph_is_a_hit_bound_to_its_own_tensors() -> None:
    g1, g2 = build(), build()
    p1 = gr.compile(g1, ["cpu"])
    hits, misses = gr.plan_cache.hits, gr.plan_cache.misses
    p2 = gr.compile(g2, ["cpu"])
    assert (gr.plan_cache.hits, gr.plan_cache.misses) == (hits + 1, misses)
    assert p2.graph is g2 and p2._calls is p1._calls  # the same compiled calls, not a recompile
    # the new graph's tensors address the same slots
    for t1, t2 in zip(g1.tensors(), g2.tensors()):
        assert p2.offset_of(t2) == p1.offset_of(t1)
    want = run(p2, g2, seed=1)
    for name in ("out", "side"):
        close(p2.get(g2.find(name)), want[name])
    # the original plan still addresses the original graph (same buffers)
    close(p1.get(g1.find("out")), want["out"])
    want = run(p1, g1, seed=2)
    close(p2.get(g2.find("out")), want["out"])


def test_a_bound_plan_takes_its_inputs_by_new_tensor() -> None:
    g1, g2 = build(), build()
    p1 = gr.compile(g1, ["cpu"])
    p2 = gr.compile(g2, ["cpu"])
    x, b = data(3)
    p2.set_input(g2.find("x"), x)
    p2.set_input(g2.find("b"), b)
    p2.run()
    close(p1.get(g1.find("out")), reference(x, b)["out"])


@pytest.mark.parametrize(
    "other",
    [lambda: build(n=N + 8), lambda: build(s=0.25), lambda: build(w=W.copy())],
    ids=["shape", "param", "weight"],
)
def test_different_shapes_params_or_weights_miss(other) -> None:
    p1 = gr.compile(build(), ["cpu"])
    hits, misses = gr.plan_cache.hits, gr.plan_cache.misses
    p2 = gr.compile(other(), ["cpu"])
    assert p2 is not p1
    assert (gr.plan_cache.hits, gr.plan_cache.misses) == (hits, misses + 1)


def test_reuse_flag_is_part_of_the_key() -> None:
    g = build()
    assert gr.compile(g, ["cpu"], reuse=False) is not gr.compile(g, ["cpu"], reuse=True)


def test_cache_false_always_compiles() -> None:
    g = build()
    hits, misses = gr.plan_cache.hits, gr.plan_cache.misses
    assert gr.compile(g, ["cpu"], cache=False) is not gr.compile(g, ["cpu"], cache=False)
    assert (gr.plan_cache.hits, gr.plan_cache.misses) == (hits, misses)


# ---- addressing -----------------------------------------------------------------------


def test_names_address_tensors() -> None:
    g = build()
    plan = gr.compile(g, ["cpu"])
    x, b = data(4)
    plan.set_input("x", x)
    plan.set_input("b", b.reshape(-1))  # flat data is accepted too
    plan.run()
    want = reference(x, b)
    close(plan.get("out"), want["out"])
    close(plan.get("side"), want["side"])
    assert np.array_equal(plan.get("x"), x)
    with pytest.raises(KeyError, match="nope"):
        plan.get("nope")
    with pytest.raises(KeyError):
        plan.set_input("nope", x)


def test_names_address_the_bound_graph() -> None:
    gr.compile(build(), ["cpu"])
    g2 = build()
    hits = gr.plan_cache.hits
    p2 = gr.compile(g2, ["cpu"])
    assert gr.plan_cache.hits == hits + 1
    x, b = data(5)
    p2.set_input("x", x)
    p2.set_input("b", b)
    p2.run()
    close(p2.get("out"), reference(x, b)["out"])


def test_get_returns_a_copy() -> None:
    g = build()
    plan = gr.compile(g, ["cpu"])
    want = run(plan, g, seed=6)
    got = plan.get("out")
    got[...] = 0
    close(plan.get("out"), want["out"])


@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_get_into_an_array(backend: str) -> None:
    """get(out=) copies into the caller's array (any shape of the right size: a slice of a bigger
    buffer), returns it, and refuses a wrong size or dtype by name, leaving it untouched."""
    g = build()
    plan = gr.compile(g, [backend], cache=False)
    want = run(plan, g, seed=9)["out"]
    buf = np.full((3, want.size), -1.0, np.float32)
    row = buf[1]
    assert plan.get("out", out=row) is row
    close(buf[1].reshape(want.shape), want)
    assert (buf[0] == -1).all() and (buf[2] == -1).all(), "only the given row was written"
    for bad in (np.zeros(want.size + 1, np.float32), np.zeros(want.size, np.float64)):
        with pytest.raises(ValueError, match="out must hold"):
            plan.get("out", out=bad)
        assert not bad.any()


@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_inputs_through_the_host_view(backend: str) -> None:
    """Host-memory backends set inputs through a cached numpy view: the values land (flat or
    4-d, int64 converted as set_tensor converts), a later set overwrites them, and a wrong
    size is refused by name without touching the input."""
    g = build()
    plan = gr.compile(g, [backend], cache=False)
    x, b = data(7)
    plan.set_input("x", x.reshape(-1))  # flat
    plan.set_input("b", b)
    plan.run()
    close(plan.get("out"), reference(x, b)["out"])
    x2, _ = data(8)
    plan.set_input("x", x2.astype(np.float64))  # converted on the way in
    plan.run()
    close(plan.get("out"), reference(x2, b)["out"])
    with pytest.raises(ValueError, match="x"):
        plan.set_input("x", np.zeros(N + 1, np.float32))
    plan.run()
    close(plan.get("out"), reference(x2, b)["out"])


# ---- eval callback --------------------------------------------------------------------


@pytest.mark.parametrize("rebuilt", [False, True])
def test_eval_callback_sees_every_computing_node_in_order(rebuilt: bool) -> None:
    g = build()
    if rebuilt:  # a bound plan reports the new graph's tensors
        gr.compile(build(), ["cpu"])
    plan = gr.compile(g, ["cpu"])
    x, b = data(7)
    plan.set_input("x", x)
    plan.set_input("b", b)
    seen: list[tuple[gr.Tensor, np.ndarray]] = []
    plan.run(lambda t, v: seen.append((t, v)))
    assert [t for t, _ in seen] == [n for n in g.nodes if n.op not in VIEW_OPS]
    want = reference(x, b)
    for t, v in seen:
        if t.name in want:
            close(v, want[t.name])
        if t.is_output:
            assert np.array_equal(v, plan.get(t))
    # running again without a callback gives the same outputs
    plan.run()
    close(plan.get("out"), want["out"])


# ---- errors ---------------------------------------------------------------------------


def test_empty_graph_raises() -> None:
    with pytest.raises(ValueError, match="no nodes"):
        gr.compile(gr.Graph(), ["cpu"])
    g = gr.Graph()
    gr.build_forward_expand(g, gr.new_input(F32, [4], "x"))  # leafs only
    with pytest.raises(ValueError, match="no nodes"):
        gr.compile(g, ["cpu"])


def test_unknown_backend_raises_value_error() -> None:
    with pytest.raises(ValueError, match="no-such-backend"):
        gr.compile(build(), ["no-such-backend"])


def test_unavailable_backend_says_why() -> None:
    down = [name for name in backends.names() if not backends.availability(name).ok]
    if not down:
        pytest.skip("every backend is available here")
    name = down[0]
    reason = backends.availability(name).reason
    assert reason, f"{name} is unavailable without a reason"
    with pytest.raises(BackendUnavailable) as err:
        gr.compile(build(), [name])
    assert name in str(err.value) and reason in str(err.value)
