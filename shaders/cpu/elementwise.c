/* Elementwise kernels: add, sub, mul, div (src1 tiled over src0, ggml's can_repeat), scale
 * (x*s + b), sqr, sqrt, exp, neg, sigmoid, silu, softplus, gelu, clamp; F32/F16 in and out.
 *
 * Numerics follow the reference (backends/ref/k_elementwise.py) formula by formula, in
 * float32: sigmoid = 1/(1+exp(-x)), silu = x*sigmoid(x), softplus = x above 20 else
 * log1p(exp(x)), gelu the tanh approximation. Arithmetic ops are exact IEEE operations, so
 * they match the reference bit for bit; exp/log are cephes-style polynomials (~1 ulp).
 *
 * The math is written once on 16-lane GCC vectors and compiled three times (portable SSE2,
 * AVX2, AVX-512) by always_inline bodies inside target-attributed row functions. A row's tail
 * goes through a zero-padded vector, so every element is computed by the same instructions
 * whatever its position: results do not depend on the batch, the row length split or the
 * thread count (batch invariance).
 *
 * The driver merges dims that are back to back in every operand (short rows become one long
 * row), splits the flat element range across threads, and converts non-F32 operands through
 * small stack tiles (gr_row_to_f32 / gr_row_from_f32). dst may alias src0 (in place): each
 * tile is read before it is written.
 */
/* NOTE: no fused multiply-add: x*s + b and the polynomials must round as numpy does */
#pragma GCC optimize("fp-contract=off")
#include "graphir_cpu.h"

#define AI static inline __attribute__((always_inline))
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/* lane select: m ? a : b (m from a vector comparison: all ones or zero) */
#define VSEL(m, a, b) ((v16f)(((m) & (v16i)(a)) | (~(m) & (v16i)(b))))
#define VSPLAT(c) ((v16f){0} + (c))

/* ======================================================================================
 * exp and log on 16 lanes (pointer arguments: no vector passing ABI, everything inlines)
 * ====================================================================================== */

/* e^x: n = round(x*log2 e), r = x - n*ln2 in two parts (Cody-Waite), e^r by cephes' expf
 * polynomial, times 2^n applied as 2^(n/2) * 2^(n-n/2) so that subnormal results round once
 * and overflow gives inf. NaN passes through. */
AI void v_exp(v16f *px) {
    const v16f x0 = *px;
    v16f x = VSEL(x0 > 89.0f, VSPLAT(89.0f), x0);
    x = VSEL(x < -104.0f, VSPLAT(-104.0f), x);
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const v16f n = (x * 1.44269504088896341f + magic) - magic;
    v16f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    v16f y = p * (r * r) + r + 1.0f;
    const v16i ni = __builtin_convertvector(n, v16i);
    const v16i n1 = ni >> 1, n2 = ni - n1;
    y = y * (v16f)((n1 + 127) << 23);
    y = y * (v16f)((n2 + 127) << 23);
    *px = VSEL(x0 != x0, x0, y);
}

/* log(u) for finite u >= 1 (cephes' logf): u = m * 2^e with m in [sqrt(1/2), sqrt(2)) */
AI void v_log_ge1(v16f *pu) {
    const v16i bits = (v16i)*pu;
    v16i e = ((bits >> 23) & 0xff) - 126;
    const v16f m = (v16f)((bits & 0x007fffff) | 0x3f000000); /* [0.5, 1) */
    const v16i lo = m < 0.707106781186547524f;
    e = e + lo; /* lo is -1 where true */
    const v16f x = VSEL(lo, m + m - 1.0f, m - 1.0f);
    const v16f fe = __builtin_convertvector(e, v16f);
    const v16f z = x * x;
    v16f y = x * 7.0376836292e-2f - 1.1514610310e-1f;
    y = y * x + 1.1676998740e-1f;
    y = y * x - 1.2420140846e-1f;
    y = y * x + 1.4249322787e-1f;
    y = y * x - 1.6668057665e-1f;
    y = y * x + 2.0000714765e-1f;
    y = y * x - 2.4999993993e-1f;
    y = y * x + 3.3333331174e-1f;
    y = y * x * z;
    y = y + fe * -2.12194440e-4f;
    y = y - z * 0.5f;
    *pu = (x + y) + fe * 0.693359375f;
}

/* ======================================================================================
 * the ops on 16 lanes: y = f(a[, b]), p = the op's float parameters (rec.fp)
 * ====================================================================================== */

AI void v_add(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a + *b; }
AI void v_sub(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a - *b; }
AI void v_mul(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a * *b; }
AI void v_div(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a / *b; }
AI void v_scale(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a * p[0] + p[1]; }
AI void v_sqr(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = *a * *a; }
AI void v_neg(v16f *y, const v16f *a, const v16f *b, const float *p) { *y = -*a; }

AI void v_sqrt(v16f *y, const v16f *a, const v16f *b, const float *p) {
    v16f r;
    for (int k = 0; k < 16; k++) r[k] = sqrtf((*a)[k]); /* one vsqrtps after SLP */
    *y = r;
}

/* np.clip: NaN passes through (both comparisons are false) */
AI void v_clamp(v16f *y, const v16f *a, const v16f *b, const float *p) {
    v16f x = *a;
    x = VSEL(x < p[0], VSPLAT(p[0]), x);
    *y = VSEL(x > p[1], VSPLAT(p[1]), x);
}

AI void v_exp_op(v16f *y, const v16f *a, const v16f *b, const float *p) {
    v16f x = *a;
    v_exp(&x);
    *y = x;
}

AI void v_sigmoid(v16f *y, const v16f *a, const v16f *b, const float *p) {
    v16f t = -*a;
    v_exp(&t);
    *y = 1.0f / (1.0f + t);
}

AI void v_silu(v16f *y, const v16f *a, const v16f *b, const float *p) {
    const v16f x = *a;
    v16f t = -x;
    v_exp(&t);
    *y = x * (1.0f / (1.0f + t));
}

/* x above 20, else log1p(exp(x)); log1p(e) = log(u) * e/(u-1) with u = 1+e (exact to ~1 ulp
 * also where 1+e rounds, Goldberg's trick), and e itself where u == 1 */
AI void v_softplus(v16f *y, const v16f *a, const v16f *b, const float *p) {
    const v16f x = *a;
    const v16i big = x > 20.0f;
    v16f e = VSEL(big, VSPLAT(20.0f), x);
    v_exp(&e);
    const v16f u = 1.0f + e;
    v16f l = u;
    v_log_ge1(&l);
    const v16f lp = VSEL(u == 1.0f, e, l * (e / (u - 1.0f)));
    *y = VSEL(big, x, lp);
}

/* tanh on 16 lanes (cephes' tanhf): an odd polynomial below |u| = 0.625, else
 * 1 - 2/(e^2|u| + 1) with u's sign; accurate to ~1 ulp near +-1, where gelu needs it */
AI void v_tanh(v16f *pu) {
    const v16f u = *pu;
    const v16i neg = u < 0.0f;
    const v16f a = VSEL(neg, -u, u);
    v16f e = a + a;
    v_exp(&e);
    v16f big = 1.0f - 2.0f / (e + 1.0f);
    big = VSEL(neg, -big, big);
    const v16f z = u * u;
    v16f s = z * -5.70498872745e-3f + 2.06390887954e-2f;
    s = s * z - 5.37397155531e-2f;
    s = s * z + 1.33314422036e-1f;
    s = s * z - 3.33332819422e-1f;
    const v16f small = s * z * u + u;
    *pu = VSEL(a < 0.625f, small, big);
}

/* the tanh approximation exactly as the reference rounds it:
 * 0.5*x * (1 + tanh(sqrt(2/pi)*x * (1 + 0.044715*x*x)))
 * NOTE: 1 + tanh cancels for x below about -3; the reference keeps that rounding, so we do too */
AI void v_gelu(v16f *y, const v16f *a, const v16f *b, const float *p) {
    const v16f x = *a;
    v16f t = (x * 0.7978845608028654f) * (1.0f + (x * 0.044715f) * x);
    v_tanh(&t);
    *y = (x * 0.5f) * (1.0f + t);
}

/* ======================================================================================
 * row functions: y[0:n] = f(a[0:n], b[0:n]) for contiguous float rows (b unused by unary ops)
 * ====================================================================================== */

typedef void (*ew_row_fn)(float *y, const float *a, const float *b, int64_t n, const float *p);

/* The loop every op shares; the tail runs through zero-padded vectors. Loads happen before
 * the store of the same lanes, so y may alias a. */
#define EW_LOOP(V)                                                              \
    int64_t i = 0;                                                              \
    for (; i + 16 <= n; i += 16) {                                              \
        v16f va, vb = {0}, vy;                                                  \
        memcpy(&va, a + i, 64);                                                 \
        if (b) memcpy(&vb, b + i, 64);                                          \
        V(&vy, &va, &vb, p);                                                    \
        memcpy(y + i, &vy, 64);                                                 \
    }                                                                           \
    if (i < n) {                                                                \
        v16f va = {0}, vb = {0}, vy;                                            \
        memcpy(&va, a + i, (size_t)(n - i) * 4);                                \
        if (b) memcpy(&vb, b + i, (size_t)(n - i) * 4);                         \
        V(&vy, &va, &vb, p);                                                    \
        memcpy(y + i, &vy, (size_t)(n - i) * 4);                                \
    }

#define EW_ROW(isa, target, op) \
    target static void isa##_##op(float *y, const float *a, const float *b, int64_t n, const float *p) { EW_LOOP(v_##op) }

/* the binary ops read b; the unary ones are called with b == NULL */
#define EW_ROWS(isa, target)                                                              \
    EW_ROW(isa, target, add) EW_ROW(isa, target, sub) EW_ROW(isa, target, mul)            \
    EW_ROW(isa, target, div) EW_ROW(isa, target, scale) EW_ROW(isa, target, sqr)          \
    EW_ROW(isa, target, sqrt) EW_ROW(isa, target, exp_op) EW_ROW(isa, target, neg)        \
    EW_ROW(isa, target, sigmoid) EW_ROW(isa, target, silu) EW_ROW(isa, target, softplus)  \
    EW_ROW(isa, target, gelu) EW_ROW(isa, target, clamp)                                  \
    static const ew_row_fn isa##_rows[GR_OP_COUNT] = {                                    \
        [GR_OP_ADD] = isa##_add, [GR_OP_SUB] = isa##_sub, [GR_OP_MUL] = isa##_mul,        \
        [GR_OP_DIV] = isa##_div, [GR_OP_SCALE] = isa##_scale, [GR_OP_SQR] = isa##_sqr,    \
        [GR_OP_SQRT] = isa##_sqrt, [GR_OP_EXP] = isa##_exp_op, [GR_OP_NEG] = isa##_neg,   \
        [GR_OP_SIGMOID] = isa##_sigmoid, [GR_OP_SILU] = isa##_silu,                       \
        [GR_OP_SOFTPLUS] = isa##_softplus, [GR_OP_GELU] = isa##_gelu,                     \
        [GR_OP_CLAMP] = isa##_clamp,                                                      \
    };

EW_ROWS(port, )
#if defined(__x86_64__) || defined(__i386__)
EW_ROWS(avx2, T_AVX2)
EW_ROWS(avx512, T_AVX512)
#define EW_TABLE (gr_has_avx512 ? avx512_rows : gr_has_avx2 ? avx2_rows : port_rows)
#else
#define EW_TABLE port_rows
#endif

/* ======================================================================================
 * the driver: shapes, threads, tiles
 * ====================================================================================== */

enum { TILE = 1024 }; /* floats per stack tile when an operand is not contiguous F32 */

static int64_t type_size(int type) { return type == GR_F16 || type == GR_BF16 ? 2 : 4; }

/* Merge dim 1 into dim 0 while every operand's rows lie back to back and b is not tiled
 * along dims 0-1 (decode-sized tensors with short rows become one long row). */
static void collapse(gr_tensor *t, int nt) {
    for (int k = 0; k < 3; k++) {
        const gr_tensor *d = &t[0];
        for (int j = 0; j < nt; j++) {
            const gr_tensor *s = &t[j];
            if (s->nb[0] != type_size(s->type)) return;
            if (d->ne[1] == 1) continue; /* merging a dim of 1 changes nothing */
            if (s->ne[0] != d->ne[0] || s->ne[1] != d->ne[1] || s->nb[1] != s->nb[0] * s->ne[0]) return;
        }
        for (int j = 0; j < nt; j++) {
            gr_tensor *s = &t[j];
            s->ne[0] *= s->ne[1];
            s->ne[1] = s->ne[2], s->nb[1] = s->nb[2];
            s->ne[2] = s->ne[3], s->nb[2] = s->nb[3];
            s->ne[3] = 1;
        }
    }
}

/* a float pointer to elements [c, c+n) of a row: the row itself when it is contiguous F32,
 * else the elements converted into tile */
static const float *load_f32(const gr_tensor *t, const char *row, int64_t c, int64_t n, float *tile) {
    const int64_t es = type_size(t->type);
    if (t->nb[0] == es) {
        if (t->type == GR_F32) return (const float *)row + c;
        gr_row_to_f32(row + c * es, t->type, tile, n);
    } else {
        for (int64_t k = 0; k < n; k++) tile[k] = gr_load_f(row + (c + k) * t->nb[0], t->type);
    }
    return tile;
}

/* b's elements for columns [c, c+n) of a row of length ne0, b's row tiled along dim 0 */
static const float *load_tiled(const gr_tensor *b, const char *row, int64_t c, int64_t n, int64_t ne0, float *tile) {
    if (b->ne[0] == ne0) return load_f32(b, row, c, n, tile);
    const int64_t m = b->ne[0];
    if (m == 1) { /* one value per row (MoE weights, per-token gates) */
        const float v = gr_load_f(row, b->type);
        for (int64_t k = 0; k < n; k++) tile[k] = v;
    } else if (b->type == GR_F32 && b->nb[0] == 4) {
        const float *x = (const float *)row;
        for (int64_t k = 0, j = c % m; k < n; k++, j = j + 1 == m ? 0 : j + 1) tile[k] = x[j];
    } else {
        for (int64_t k = 0, j = c % m; k < n; k++, j = j + 1 == m ? 0 : j + 1) tile[k] = gr_load_f(row + j * b->nb[0], b->type);
    }
    return tile;
}

static void store_f32(const gr_tensor *t, char *row, int64_t c, int64_t n, const float *v) {
    const int64_t es = type_size(t->type);
    if (t->nb[0] == es) {
        gr_row_from_f32(v, t->type, row + c * es, n);
    } else {
        for (int64_t k = 0; k < n; k++) gr_store_f(row + (c + k) * t->nb[0], t->type, v[k]);
    }
}

/* columns [c0, c1) of one row */
static void ew_segment(ew_row_fn fn, const gr_tensor *d, const gr_tensor *a, const gr_tensor *b, char *drow,
                       const char *arow, const char *brow, int64_t c0, int64_t c1, const float *p) {
    float ta[TILE], tb[TILE], ty[TILE];
    const int direct = d->type == GR_F32 && d->nb[0] == 4;
    for (int64_t c = c0; c < c1;) {
        const int64_t n = c1 - c < TILE ? c1 - c : TILE;
        const float *xa = load_f32(a, arow, c, n, ta);
        const float *xb = b ? load_tiled(b, brow, c, n, d->ne[0], tb) : NULL;
        float *y = direct ? (float *)drow + c : ty;
        fn(y, xa, xb, n, p);
        if (!direct) store_f32(d, drow, c, n, ty);
        c += n;
    }
}

static void ew_run(const gr_op *op, const gr_thread *th) {
    const int binary = op->src[1].data != NULL;
    gr_tensor t[3] = {op->dst, op->src[0], op->src[1]};
    collapse(t, binary ? 3 : 2);
    const gr_tensor *d = &t[0], *a = &t[1], *b = binary ? &t[2] : NULL;
    const ew_row_fn fn = EW_TABLE[op->op];
    const int64_t ne0 = d->ne[0], n = ne0 * gr_nrows(d);
    /* the flat range of this thread, in whole 64-element pieces (no shared cache lines) */
    int64_t e0, e1;
    gr_chunk((n + 63) / 64, th->ith, th->nth, &e0, &e1);
    e0 *= 64;
    e1 = e1 * 64 < n ? e1 * 64 : n;
    while (e0 < e1) {
        int64_t i1, i2, i3;
        gr_unravel_row(d, e0 / ne0, &i1, &i2, &i3);
        const int64_t c0 = e0 % ne0, c1 = e1 - e0 + c0 < ne0 ? e1 - e0 + c0 : ne0;
        const char *brow = b ? gr_row(b, i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]) : NULL;
        ew_segment(fn, d, a, b, gr_row(d, i1, i2, i3), gr_row(a, i1, i2, i3), brow, c0, c1, op->fp);
        e0 += c1 - c0;
    }
}

#define EW_KERNEL(name) \
    void gr_k_##name(const gr_op *op, const gr_thread *th) { ew_run(op, th); }
EW_KERNEL(add) EW_KERNEL(sub) EW_KERNEL(mul) EW_KERNEL(div) EW_KERNEL(scale)
EW_KERNEL(sqr) EW_KERNEL(sqrt) EW_KERNEL(exp) EW_KERNEL(neg) EW_KERNEL(sigmoid)
EW_KERNEL(silu) EW_KERNEL(softplus) EW_KERNEL(gelu) EW_KERNEL(clamp)
