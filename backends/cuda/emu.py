"""A host emulator of the CUDA kernels, for machines without a GPU (tests only).

The very sources of shaders/cuda/ are compiled with g++ against a small shim (`__global__` and
friends as plain C++, `__shared__` as function statics, fp16 conversions from cuda_fp16.h's host
side). A launch runs its blocks one after another; the threads of a block run as fibers (ucontext)
that switch at `__syncthreads` (a block barrier) and at each warp shuffle (a warp barrier), so
cooperative kernels (warp sums, shared-memory tiles, online softmax merges) run as written.
Device addresses are host addresses: the fake driver of tests/backends/test_cuda.py hands out host
memory. Transcendentals come from glibc rather than CUDA's libdevice, so results agree with a GPU's
to within rounding, not bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from . import compiler

ALIGN = {"T": 8, "P": 8, "i": 4, "f": 4}
SIZE = {"T": 64, "P": 8, "i": 4, "f": 4}
CTYPE = {"T": "Tensor", "P": "const float *", "i": "int", "f": "float"}
# kernels whose threads talk (barriers, warp shuffles): run as fibers; the rest thread by thread
COOPERATIVE = frozenset({"norm_rows", "rows", "soft_max", "flash_attn_ext", "gated_delta_net", "mul_mat_vec",
                         "mul_mat_tiled"})  # fmt: skip

SHIM = r"""
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cuda_fp16.h>
#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
struct emu_dim3 { unsigned x, y, z; };
extern emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
void emu_syncthreads();
void emu_syncwarp();
extern double emu_xchg[2][1024];
inline void __syncthreads() { emu_syncthreads(); }
extern unsigned emu_phase[1024];
// two exchange slots used alternately: a lane that runs ahead into the next shuffle writes the
// other slot, and cannot reach this slot again before every lane has passed the next warp barrier
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    unsigned t = threadIdx.x, ph = emu_phase[t]++ & 1;
    emu_xchg[ph][t] = (double)v;
    emu_syncwarp();
    return (T)emu_xchg[ph][t ^ (unsigned)o];
}
"""

SCHED = r"""
#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "emu_shim.h"
emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
double emu_xchg[2][1024];
unsigned emu_phase[1024];
namespace {
enum { RUN, WAIT, DONE };
constexpr size_t STACK = 64 * 1024;
struct Fiber { ucontext_t ctx; int state; };
ucontext_t sched_ctx;
std::vector<Fiber> fibers;
std::vector<char> stacks;
int cur, n_threads, block_live, block_waiting;
int warp_live[32], warp_waiting[32];
void (*body)(const char *);
const char *body_args;

void yield_wait() {
    fibers[cur].state = WAIT;
    swapcontext(&fibers[cur].ctx, &sched_ctx);
}

void entry() {
    body(body_args);
    fibers[cur].state = DONE;
    int w = cur / 32;
    block_live--;
    warp_live[w]--;
    // an exiting thread may complete a barrier the others wait at
    if (block_live > 0 && block_waiting == block_live) {
        block_waiting = 0;
        for (auto &f : fibers) if (f.state == WAIT) f.state = RUN;
    }
    if (warp_live[w] > 0 && warp_waiting[w] == warp_live[w]) {
        warp_waiting[w] = 0;
        for (int t = 32 * w; t < 32 * w + 32 && t < n_threads; t++) if (fibers[t].state == WAIT) fibers[t].state = RUN;
    }
}
}  // namespace

int plain = 0, plain_synced = 0;  // plain: threads run one after another as calls (no barrier may occur)

void emu_syncthreads() {
    if (plain) { plain_synced = 1; return; }
    if (++block_waiting == block_live) {  // the last one in releases the others
        block_waiting = 0;
        for (int t = 0; t < n_threads; t++) if (fibers[t].state == WAIT) fibers[t].state = RUN;
        return;
    }
    yield_wait();
}

void emu_syncwarp() {
    if (plain) { plain_synced = 1; return; }
    int w = cur / 32;
    if (++warp_waiting[w] == warp_live[w]) {
        warp_waiting[w] = 0;
        for (int t = 32 * w; t < 32 * w + 32 && t < n_threads; t++) if (fibers[t].state == WAIT) fibers[t].state = RUN;
        return;
    }
    yield_wait();
}

// cooperative == 0: the kernel never synchronizes, so each thread runs to its end as a plain call
extern "C" int emu_launch(void (*fn)(const char *), const char *args, const unsigned *grid, const unsigned *block,
                          int cooperative) {
    n_threads = (int)(block[0] * block[1] * block[2]);
    if (block[1] != 1 || block[2] != 1 || n_threads > 1024) return -1;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], 1, 1};
    body = fn;
    body_args = args;
    if (!cooperative) {
        plain = 1;
        plain_synced = 0;
        for (unsigned z = 0; z < grid[2]; z++)
            for (unsigned y = 0; y < grid[1]; y++)
                for (unsigned x = 0; x < grid[0]; x++) {
                    blockIdx = {x, y, z};
                    for (int t = 0; t < n_threads; t++) {
                        threadIdx = {(unsigned)t, 0, 0};
                        fn(args);
                    }
                }
        plain = 0;
        return plain_synced ? -3 : 0;
    }
    fibers.resize(n_threads);
    stacks.resize((size_t)n_threads * STACK);
    static ucontext_t proto;
    static bool have_proto = false;
    if (!have_proto) { getcontext(&proto); have_proto = true; }
    for (int t = 0; t < n_threads; t++) emu_phase[t] = 0;
    for (unsigned z = 0; z < grid[2]; z++)
        for (unsigned y = 0; y < grid[1]; y++)
            for (unsigned x = 0; x < grid[0]; x++) {
                blockIdx = {x, y, z};
                block_live = n_threads;
                block_waiting = 0;
                for (int w = 0; w < 32; w++) {
                    warp_live[w] = w * 32 < n_threads ? (n_threads - w * 32 < 32 ? n_threads - w * 32 : 32) : 0;
                    warp_waiting[w] = 0;
                }
                for (int t = 0; t < n_threads; t++) {
                    fibers[t].ctx = proto;
                    fibers[t].ctx.uc_stack.ss_sp = stacks.data() + (size_t)t * STACK;
                    fibers[t].ctx.uc_stack.ss_size = STACK;
                    fibers[t].ctx.uc_link = &sched_ctx;
                    makecontext(&fibers[t].ctx, entry, 0);
                    fibers[t].state = RUN;
                }
                for (;;) {
                    bool ran = false, waiting = false;
                    for (int t = 0; t < n_threads; t++) {
                        if (fibers[t].state == WAIT) waiting = true;
                        if (fibers[t].state != RUN) continue;
                        cur = t;
                        threadIdx = {(unsigned)t, 0, 0};
                        swapcontext(&sched_ctx, &fibers[t].ctx);
                        ran = true;
                    }
                    if (!ran) {
                        if (waiting) return -2;  // deadlock: threads wait at a barrier the others never reach
                        break;
                    }
                }
            }
    return 0;
}
"""


def offsets(layout: str) -> list[int]:
    """Byte offset of each parameter in a packed buffer (runtime.pack's native alignment)."""
    out, pos = [], 0
    for c in layout:
        pos = -(-pos // ALIGN[c]) * ALIGN[c]
        out.append(pos)
        pos += SIZE[c]
    return out


def trampolines(src: Path) -> str:
    """One `emu_<kernel>(const char *args)` per kernel of src: the parameters unpacked, the kernel called."""
    out = [f'#include "{src}"']
    for name, layout in compiler.kernel_signatures(src.read_text()).items():
        loads, names = [], []
        for i, (c, off) in enumerate(zip(layout, offsets(layout))):
            loads.append(f"    {CTYPE[c]} p{i}; memcpy(&p{i}, args + {off}, sizeof p{i});")
            names.append(f"p{i}")
        out.append(f'extern "C" void emu_{name}(const char *args) {{\n' + "\n".join(loads)
                   + f"\n    {name}({', '.join(names)});\n}}")  # fmt: skip
    return "\n".join(out) + "\n"


def available() -> str | None:
    """None when the emulator can be built here, else why not."""
    if shutil.which("g++") is None:
        return "g++ not found"
    if cuda_include() is None:
        return "no CUDA toolkit headers (cuda_fp16.h)"
    return None


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (with cuda_fp16.h), or None."""
    nvcc = compiler.nvcc()
    roots = [Path(nvcc).resolve().parent.parent] if nvcc else []
    roots += [Path(os.environ["CUDA_HOME"])] if os.environ.get("CUDA_HOME") else []
    for root in [*roots, Path("/usr/local/cuda")]:
        if (root / "include" / "cuda_fp16.h").exists():
            return root / "include"
    return None


@cache
def library() -> ctypes.CDLL:
    """The emulator: every kernel source + the fiber scheduler, built once per source hash."""
    include = cuda_include()
    srcs = compiler.sources()
    h = hashlib.sha256((SHIM + SCHED).encode())
    for s in [*srcs, compiler.shader_dir() / compiler.HEADER]:
        h.update(s.read_bytes())
    out = compiler.cache_dir() / f"emu-{h.hexdigest()[:24]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            t = Path(tmp)
            (t / "emu_shim.h").write_text(SHIM)
            (t / "sched.cpp").write_text(SCHED)
            units = [t / "sched.cpp"]
            for s in srcs:
                (t / f"{s.stem}.cpp").write_text(trampolines(s))
                units.append(t / f"{s.stem}.cpp")
            cmd = ["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-w", "-include",
                   str(t / "emu_shim.h"), "-I", str(t), "-I", str(compiler.shader_dir()), "-I", str(include),
                   "-o", str(t / out.name), *map(str, units)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"[cuda emu] g++ failed:\n{r.stderr[-4000:]}")
            (t / out.name).replace(out)
    lib = ctypes.CDLL(str(out))
    lib.emu_launch.restype = ctypes.c_int
    return lib


def launch(kernel: str, grid, block, args: bytes) -> None:
    """Run one launch of `kernel` on the host (its parameter buffer as the driver would get it)."""
    lib = library()
    fn = ctypes.cast(getattr(lib, f"emu_{kernel}"), ctypes.c_void_p)
    buf = ctypes.create_string_buffer(args, len(args))
    g = (ctypes.c_uint * 3)(*grid)
    b = (ctypes.c_uint * 3)(*block)
    rc = lib.emu_launch(fn, buf, g, b, int(kernel in COOPERATIVE))
    if rc != 0:
        why = {-1: "bad block", -2: "deadlock at a barrier", -3: "synchronizes but is not in COOPERATIVE"}[rc]
        raise RuntimeError(f"[cuda emu] {kernel}: {why}")
