/* graphir native cpu backend: the op record, the thread context and the helpers every
 * kernel file shares (element access through ne/nb strides, type conversions).
 *
 * A split is lowered (backends/cpu/lower.py) to an array of gr_op records, one per computing
 * node, and run by ONE call to gr_run(): every thread walks the records in order, runs its
 * share of each (rows/chunks by ith/nth) and meets the others at a barrier after each op.
 *
 * ne/nb follow ggml: ne[0] innermost, nb[] in bytes; for block types nb[0] is the block size.
 * The Python mirror of gr_tensor/gr_op is the cdef in backends/cpu/build.py; cffi checks the
 * field offsets when it compiles the module.
 */
#ifndef GRAPHIR_CPU_H
#define GRAPHIR_CPU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define GR_MAX_SRC 6
#define GR_MAX_PARAMS 16

/* type ids: GGUF numbering (graphir/types.py DType) */
enum gr_type {
    GR_F32 = 0, GR_F16 = 1, GR_Q4_0 = 2, GR_Q8_0 = 8, GR_Q4_K = 12, GR_Q5_K = 13, GR_Q6_K = 14,
    GR_I32 = 26, GR_BF16 = 30,
    /* not GGUF types: Q8_0 / Q4_0 weights repacked by the cpu backend into groups of 16 rows (matmul.h) */
    GR_Q4_0_R16 = 1002, GR_Q8_0_R16 = 1008,
};

/* op codes: one per graphir Op (graphir/ops.py), same names */
enum gr_opcode {
    GR_OP_NONE = 0,
    GR_OP_CONT, GR_OP_CPY, GR_OP_DUP,
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

typedef struct gr_tensor {
    char *data;     /* address of element (0,0,0,0) */
    int32_t type;   /* enum gr_type */
    int32_t pad_;
    int64_t ne[4];
    int64_t nb[4];
} gr_tensor;

typedef struct gr_op {
    int32_t op;     /* enum gr_opcode */
    int32_t n_src;
    gr_tensor dst;
    gr_tensor src[GR_MAX_SRC];  /* absent sources have data == NULL */
    int32_t ip[GR_MAX_PARAMS];  /* integer parameters (per op, see backends/cpu/ops.py) */
    float fp[GR_MAX_PARAMS];    /* float parameters */
    const void *aux;            /* host constants computed at lower time (e.g. ALiBi slopes) */
    char *wdata;                /* scratch of wsize bytes shared by the op's threads */
    int64_t wsize;
} gr_op;

/* gated_delta_net reading and writing the recurrent-state cache itself (ip[1] = 1, aux points
 * here): the get_rows that gathers each sequence's state into src[5] and the set_rows that
 * stores dst's snapshot rows into the cache are fused away (backends/cpu/fuse.py). src[5] and
 * dst's snapshot rows keep their places: the kernel goes through them when indices alias. */
typedef struct gr_state_io {
    gr_tensor cache;    /* F32 [n_embd_s, n_cells], rows contiguous */
    gr_tensor src_ids;  /* I32 [n_seqs]: the row each sequence's state is read from */
    gr_tensor dst_ids;  /* I32 [snapshots n_seqs]: slot j of seq s goes to row dst_ids[j n_seqs + s] */
} gr_state_io;

struct gr_pool;

/* What a kernel knows about the thread running it. */
typedef struct gr_thread {
    int ith, nth;
    struct gr_pool *pool;
} gr_thread;

typedef void (*gr_kernel)(const gr_op *op, const gr_thread *th);
typedef int64_t (*gr_wsize_fn)(const gr_op *op, int nth);

/* ---- executor (exec.c) ---- */
int gr_run(gr_op *ops, int n_ops, int n_threads);
int gr_run_timed(gr_op *ops, int n_ops, int n_threads, double *times); /* + each op's seconds */
int gr_op_supported(int opcode);
int64_t gr_op_wsize(const gr_op *op, int n_threads);
void gr_barrier(const gr_thread *th);  /* all nth threads of the current op meet here */
void gr_init(void);
void gr_init_tables(void);             /* convert.c: the f16 table */
int gr_set_isa(int mask);              /* cap the instruction sets used (tests); returns gr_isa() */
int gr_isa(void);                      /* bit 0 avx2+fma, bit 1 avx512f/bw/vl, bit 2 avx512vnni */
int gr_drop_pages(const void *p, int64_t n); /* exec.c: madvise(MADV_DONTNEED) the whole pages inside */
extern int gr_has_avx2, gr_has_avx512, gr_has_vnni;

/* [begin, end) of n items for thread ith of nth (contiguous chunks). */
static inline void gr_chunk(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = (n + nth - 1) / nth;
    int64_t b = per * ith;
    *begin = b < n ? b : n;
    *end = b + per < n ? b + per : n;
}

/* ---- conversions (convert.c) ---- */
extern float gr_f16_table[65536];
static inline float gr_f16_to_f32(uint16_t h) { return gr_f16_table[h]; }
uint16_t gr_f32_to_f16(float f);  /* round to nearest even, as numpy/ggml */
static inline float gr_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t gr_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    if ((v.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((v.u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((v.u + (0x7fff + ((v.u >> 16) & 1))) >> 16);
}

/* ---- strided element access ---- */
static inline char *gr_ptr(const gr_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
}
static inline char *gr_row(const gr_tensor *t, int64_t i1, int64_t i2, int64_t i3) {
    return t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
}
static inline int64_t gr_nrows(const gr_tensor *t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static inline int64_t gr_nelements(const gr_tensor *t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }
/* row index r -> (i1, i2, i3) */
static inline void gr_unravel_row(const gr_tensor *t, int64_t r, int64_t *i1, int64_t *i2, int64_t *i3) {
    *i1 = r % t->ne[1];
    r /= t->ne[1];
    *i2 = r % t->ne[2];
    *i3 = r / t->ne[2];
}
static inline int gr_is_contiguous_rows(const gr_tensor *t, int64_t elem_size) { return t->nb[0] == elem_size; }

/* one element of a non-block type as float */
static inline float gr_load_f(const char *p, int type) {
    switch (type) {
    case GR_F32: return *(const float *)p;
    case GR_F16: return gr_f16_to_f32(*(const uint16_t *)p);
    case GR_BF16: return gr_bf16_to_f32(*(const uint16_t *)p);
    case GR_I32: return (float)*(const int32_t *)p;
    default: return NAN;
    }
}
static inline void gr_store_f(char *p, int type, float v) {
    switch (type) {
    case GR_F32: *(float *)p = v; break;
    case GR_F16: *(uint16_t *)p = gr_f32_to_f16(v); break;
    case GR_BF16: *(uint16_t *)p = gr_f32_to_bf16(v); break;
    case GR_I32: *(int32_t *)p = (int32_t)v; break;
    default: break;
    }
}
/* a row of n elements of `type` (any type incl. block formats, contiguous along ne[0]) to float */
void gr_row_to_f32(const char *src, int type, float *dst, int64_t n);
/* float row to a row of `type` (block formats quantized as graphir/quants.py does) */
void gr_row_from_f32(const float *src, int type, char *dst, int64_t n);
/* elements per block and bytes per block of a type */
int gr_block_elems(int type);
int gr_block_bytes(int type);

/* ---- kernels: one per op, defined in the op family's file; weak, so an op whose family is
 * not compiled in reads as unsupported (gr_op_supported) instead of failing to link ---- */
/* Every computing op once, as X(NAME, name): the kernel declarations below and the executor's
 * tables (exec.c) expand it, so an op is listed in one place (the enum above mirrors graphir's Op). */
#define GR_FOR_EACH_OP(X) \
    X(CONT, cont) X(CPY, cpy) X(DUP, dup) \
    X(ADD, add) X(SUB, sub) X(MUL, mul) X(DIV, div) X(SCALE, scale) \
    X(SQR, sqr) X(SQRT, sqrt) X(EXP, exp) X(NEG, neg) X(SIGMOID, sigmoid) X(SILU, silu) \
    X(SOFTPLUS, softplus) X(GELU, gelu) X(CLAMP, clamp) X(REPEAT, repeat) \
    X(SUM_ROWS, sum_rows) X(MEAN, mean) X(RMS_NORM, rms_norm) X(L2_NORM, l2_norm) \
    X(SOFT_MAX, soft_max) X(ARGMAX, argmax) X(ARGSORT, argsort) X(TOP_K, top_k) \
    X(GET_ROWS, get_rows) X(SET_ROWS, set_rows) X(CONCAT, concat) \
    X(MUL_MAT, mul_mat) X(MUL_MAT_ID, mul_mat_id) \
    X(ROPE, rope) X(FLASH_ATTN_EXT, flash_attn_ext) \
    X(SSM_CONV, ssm_conv) X(GATED_DELTA_NET, gated_delta_net)

#define GR_DECLARE(NAME, name) \
    void gr_k_##name(const gr_op *op, const gr_thread *th) __attribute__((weak)); \
    int64_t gr_w_##name(const gr_op *op, int nth) __attribute__((weak));
GR_FOR_EACH_OP(GR_DECLARE)
#undef GR_DECLARE

#endif
