"""The cffi build of the native cpu backend (API mode, out of line): `setup.py` names
`ffibuilder` in `cffi_modules`, so `pip install -e .` and a wheel build both compile
`graphir.backends.cpu._native` from `shaders/cpu/*.c`.

NOTE: no `-march=native`: the baseline is portable x86-64 (or the host's default ISA
elsewhere); AVX2 / AVX-512 (+VNNI) variants of the hot loops carry their own
`__attribute__((target(...)))` and are chosen at run time (`gr_isa`).

`CDEF` mirrors shaders/cpu/graphir_cpu.h; cffi checks every struct field's offset and type
against the header when it compiles the module, so a drifted mirror fails the build.
"""

from __future__ import annotations

import platform
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "shaders" / "cpu"

CDEF = """
#define GR_MAX_SRC 6
#define GR_MAX_PARAMS 16
typedef struct gr_tensor {
    char *data;
    int32_t type;
    int32_t pad_;
    int64_t ne[4];
    int64_t nb[4];
} gr_tensor;
typedef struct gr_op {
    int32_t op;
    int32_t n_src;
    gr_tensor dst;
    gr_tensor src[6];
    int32_t ip[16];
    float fp[16];
    const void *aux;
    char *wdata;
    int64_t wsize;
} gr_op;
typedef struct gr_state_io {
    gr_tensor cache;
    gr_tensor src_ids;
    gr_tensor dst_ids;
} gr_state_io;
enum gr_opcode {
    GR_OP_NONE, GR_OP_CONT, GR_OP_CPY, GR_OP_DUP,
    GR_OP_ADD, GR_OP_SUB, GR_OP_MUL, GR_OP_DIV, GR_OP_SCALE,
    GR_OP_SQR, GR_OP_SQRT, GR_OP_EXP, GR_OP_NEG, GR_OP_SIGMOID, GR_OP_SILU, GR_OP_SOFTPLUS,
    GR_OP_GELU, GR_OP_CLAMP, GR_OP_REPEAT,
    GR_OP_SUM_ROWS, GR_OP_MEAN, GR_OP_RMS_NORM, GR_OP_L2_NORM, GR_OP_SOFT_MAX,
    GR_OP_ARGMAX, GR_OP_ARGSORT, GR_OP_TOP_K,
    GR_OP_GET_ROWS, GR_OP_SET_ROWS, GR_OP_CONCAT,
    GR_OP_MUL_MAT, GR_OP_MUL_MAT_ID,
    GR_OP_ROPE,
    GR_OP_FLASH_ATTN_EXT,
    GR_OP_SSM_CONV, GR_OP_GATED_DELTA_NET,
    GR_OP_COUNT
};
int gr_run(gr_op *ops, int n_ops, int n_threads);
int gr_run_timed(gr_op *ops, int n_ops, int n_threads, double *times);
int gr_op_supported(int opcode);
int64_t gr_op_wsize(const gr_op *op, int n_threads);
void gr_init(void);
int gr_isa(void);
int gr_set_isa(int mask);
#define GR_Q8_0_R16 ...
#define GR_Q4_0_R16 ...
int gr_drop_pages(const void *p, int64_t n);
void gr_repack_q8_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst);
void gr_repack_q4_0_r16(const char *src, int64_t K, int64_t M, int64_t nmat, int64_t snb1, int64_t snb2, char *dst);
"""


def sources() -> list[str]:
    return sorted(str(p) for p in SRC.glob("*.c"))


def compile_args() -> list[str]:
    args = ["-O3", "-std=gnu11", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
    if platform.machine() in ("x86_64", "AMD64"):
        args.append("-mtune=generic")
    return args


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "graphir.backends.cpu._native",
    '#include "graphir_cpu.h"\n#include "matmul.h"',
    sources=sources(),
    include_dirs=[str(SRC)],
    extra_compile_args=compile_args(),
    libraries=["m", "pthread"],
)

if __name__ == "__main__":  # rebuild in place while editing kernels: python backends/cpu/build.py
    import shutil
    import sys

    built = Path(ffibuilder.compile(tmpdir=str(ROOT / "build" / "cffi"), verbose="-v" in sys.argv))
    for old in Path(__file__).parent.glob("_native*.so"):  # e.g. the abi3 build of pip install -e
        old.unlink()
    shutil.copy2(built, Path(__file__).parent / built.name)
    print(f"built {Path(__file__).parent / built.name}")
