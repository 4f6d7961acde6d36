"""The native cpu backend's executor: one C call per split, the thread pool and its barriers,
eval-callback runs node by node, concurrent use, and an install without the extension."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

import graphir as gr
from graphir.backends import availability, get_backend

NATIVE = "cpu"
pytestmark = pytest.mark.skipif(not availability(NATIVE).ok, reason=f"native cpu: {availability(NATIVE).reason}")


@pytest.fixture
def threaded(monkeypatch):
    """Every split multi-threaded, whatever its size; thread count restored after."""
    from graphir.backends.cpu import backend as cpu_backend

    monkeypatch.setattr(cpu_backend, "SMALL_OP_BYTES", 0)
    be = get_backend(NATIVE)
    saved = be.n_threads
    yield be
    be.n_threads = saved


def _chain(n_ops: int, width: int = 67, rows: int = 13):
    """x -> ((x + b) * b + b) * b ...: each op reads the previous one's result (a barrier each)."""
    x = gr.new_input(gr.F32, [width, rows], "x")
    b = gr.new_input(gr.F32, [width, 1], "b")
    cur = x
    for i in range(n_ops):
        cur = (gr.add if i % 2 == 0 else gr.mul)(cur, b).set_name(f"t{i}")
    return x, b, cur.set_output()


def _expected(xv: np.ndarray, bv: np.ndarray, n_ops: int) -> np.ndarray:
    cur = xv
    for i in range(n_ops):
        cur = (cur + bv) if i % 2 == 0 else (cur * bv)
    return cur


def test_a_split_is_one_native_call() -> None:
    x, b, out = _chain(9)
    plan = gr.compile(gr.build_graph(out), [NATIVE], cache=False)
    assert plan.stats.n_splits == 1 and len(plan._calls) == 1
    assert plan._calls[0].program.n == 9  # one op record per computing node


@pytest.mark.parametrize("name", ["cpu", "ref"])
def test_host_buffers_are_cache_line_aligned(name: str) -> None:
    """Compute buffers start on a 64-byte line (numpy alone aligns to 16): every tensor then starts
    where its offset says, and the kernels' 64-byte activation loads do not straddle lines."""
    from graphir.backends import get_backend

    be = get_backend(name)
    for n in (1, 40, 4096, 40_768, 1 << 20):
        bufs = [be.alloc_buffer(n) for _ in range(8)]
        assert all(b.handle.ctypes.data % be.alignment == 0 and b.handle.size == n and not b.handle.any() for b in bufs)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
def test_dependent_ops_meet_at_barriers(threaded, n_threads: int) -> None:
    threaded.n_threads = n_threads
    rng = np.random.default_rng(n_threads)
    x, b, out = _chain(24)
    plan = gr.compile(gr.build_graph(out), [NATIVE], cache=False)
    xv = rng.uniform(0.5, 1.0, (13, 67)).astype(np.float32)
    bv = rng.uniform(0.9, 1.1, (1, 67)).astype(np.float32)
    for _ in range(20):  # repeated runs reuse the pool: no lost wake-ups, no stale rows
        plan.set_input(x, xv)
        plan.set_input(b, bv)
        plan.run()
        np.testing.assert_allclose(plan.get(out)[0, 0], _expected(xv, bv, 24), rtol=1e-5)


def _drive(choice, n: int, cost: dict[int, float], runs: int) -> str:
    """`runs` picks of a ThreadChoice with fixed seconds per thread count: the counts as a string."""
    out = []
    for _ in range(runs):
        k = choice.pick(n)
        choice.record(k, cost[k])
        out.append(str(k))
    return "".join(out)


def test_thread_choice_follows_the_faster_count_and_recovers() -> None:
    """Quiet: n threads win and one thread only runs in rare probes; another process takes a core
    (n threads 5x slower at their barriers): the next probe moves to one thread; the load goes:
    a later probe moves back. The first run of a program is never counted."""
    from graphir.backends.cpu.backend import ThreadChoice

    c = ThreadChoice()
    quiet = _drive(c, 2, {2: 1.0, 1: 1.6}, 400)
    assert c.best == 2 and quiet[20:].count("1") <= 0.05 * len(quiet)
    busy = _drive(c, 2, {2: 5.0, 1: 1.7}, 600)
    assert c.best == 1 and busy[-100:].count("2") <= 4, "one thread under load"
    back = _drive(c, 2, {2: 1.0, 1: 1.6}, 600)
    assert c.best == 2 and back[-100:].count("1") <= 4, "back to n threads once the load is gone"
    c2 = ThreadChoice()
    c2.pick(2)
    c2.record(2, 100.0)  # the first run (buffers touched for the first time) is not a sample
    assert not c2.samples[2]
    # a program run a few times (a prompt's ubatches) always gets the n threads asked for
    assert _drive(ThreadChoice(), 2, {2: 9.0, 1: 1.0}, ThreadChoice.WARMUP) == "2" * ThreadChoice.WARMUP


def test_fixed_threads_env_turns_the_choice_off(monkeypatch) -> None:
    from graphir.backends.cpu.backend import CPUBackend

    monkeypatch.setenv("GRAPHIR_FIXED_THREADS", "1")
    assert not CPUBackend().adaptive_threads
    monkeypatch.setenv("GRAPHIR_FIXED_THREADS", "0")
    assert CPUBackend().adaptive_threads


def test_measurement_tools_fix_the_thread_count() -> None:
    from graphir.backends.cpu.backend import fixed_threads

    be = get_backend(NATIVE)
    assert be.adaptive_threads
    with fixed_threads():
        assert not be.adaptive_threads
    assert be.adaptive_threads


def test_callback_run_goes_node_by_node(threaded) -> None:
    threaded.n_threads = 2
    x, b, out = _chain(4)
    plan = gr.compile(gr.build_graph(out), [NATIVE], cache=False)
    xv = np.full((13, 67), 2.0, np.float32)
    bv = np.full((1, 67), 3.0, np.float32)
    plan.set_input(x, xv)
    plan.set_input(b, bv)
    seen: dict[str, np.ndarray] = {}
    plan.run(callback=lambda node, value: seen.__setitem__(node.name, value))
    assert list(seen) == ["t0", "t1", "t2", "t3"]
    for i in range(4):
        np.testing.assert_allclose(seen[f"t{i}"][0, 0], _expected(xv, bv, i + 1), rtol=1e-6)


def test_two_python_threads_share_the_backend(threaded) -> None:
    """gr_run serializes splits: plans run from two threads at once both stay correct."""
    threaded.n_threads = 2
    plans, data = [], []
    for seed in range(2):
        x, b, out = _chain(10)
        plan = gr.compile(gr.build_graph(out), [NATIVE], cache=False)
        rng = np.random.default_rng(seed)
        xv = rng.uniform(0.5, 1.0, (13, 67)).astype(np.float32)
        bv = rng.uniform(0.9, 1.1, (1, 67)).astype(np.float32)
        plan.set_input(x, xv)
        plan.set_input(b, bv)
        plans.append((plan, out))
        data.append(_expected(xv, bv, 10))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(50):
                plans[i][0].run()
                np.testing.assert_allclose(plans[i][0].get(plans[i][1])[0, 0], data[i], rtol=1e-5)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]


def test_without_the_extension_graphir_imports_and_says_why() -> None:
    code = (
        "import sys; sys.modules['graphir.backends.cpu._native'] = None\n"
        "import graphir, numpy as np\n"
        "from graphir.backends import availability\n"
        "av = availability('cpu')\n"
        "assert not av.ok and 'not built' in av.reason, av\n"
        "x = graphir.new_input(graphir.F32, [4], 'x')\n"
        "plan = graphir.compile(graphir.build_graph(graphir.neg(x).set_name('y')), ['cpu'])\n"
        "plan.set_input('x', np.arange(4, dtype=np.float32)); plan.run()\n"
        "assert (plan.get('y').ravel() == -np.arange(4)).all()\n"
        "assert {sp.backend.name for sp in plan.schedule.splits} == {'ref'}\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr
    assert "backend 'cpu' is unavailable" in r.stderr and "using 'ref'" in r.stderr
