/* Row reductions and norms over dim 0: sum_rows, mean, rms_norm, l2_norm, soft_max, argmax,
 * argsort, top_k. Numerics are backends/ref/k_reduce.py's (which follows ggml-cpu):
 *   - row sums accumulate float32 values (squares rounded to float32 first) in double and are
 *     rounded to float32 once;
 *   - norm scales are computed in float32 and applied as one float32 multiply;
 *   - soft_max: w = x*scale (+ slope*mask), e = exp(w - max), y = e * (float)(1.0/sum_f64(e)).
 *   - argmax takes the first index on ties; argsort/top_k are stable (ties: lower index first),
 *     NaNs sort after every number in both orders (numpy's rule).
 *
 * Threads take contiguous chunks of rows; each row is computed by one thread in a fixed order
 * that depends only on its length, so results are batch-invariant. Rows whose elements are
 * not contiguous (nb[0] != 4) are gathered into per-thread scratch first, so every layout runs
 * the same row code. Every kernel is correct when dst aliases src[0] (a row is read before
 * it is written, element for element).
 */
#include "graphir_cpu.h"

#include <stdbool.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#else
#define GR_X86 0
#endif

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* ======================================================================================
 * rows and scratch
 * ====================================================================================== */

/* bytes of one scratch row of n 4-byte elements, cache-line aligned */
static int64_t row_bytes(int64_t n) { return (n * 4 + 63) & ~(int64_t)63; }

/* this thread's scratch: `rows` scratch rows of n elements each */
static char *scratch(const gr_op *op, const gr_thread *th, int64_t n, int rows) {
    return op->wdata + (int64_t)th->ith * rows * row_bytes(n);
}

static bool contiguous(const gr_tensor *t) { return t->nb[0] == 4; }

/* a float32 row of t: the row itself when contiguous, else gathered into buf */
static const float *load_row(const gr_tensor *t, int64_t i1, int64_t i2, int64_t i3, float *buf) {
    const char *p = gr_row(t, i1, i2, i3);
    if (contiguous(t)) return (const float *)p;
    for (int64_t i = 0; i < t->ne[0]; i++) buf[i] = *(const float *)(p + i * t->nb[0]);
    return buf;
}

/* where a kernel writes dst's row: the row itself when contiguous, else buf (see store_row) */
static float *out_row(const gr_tensor *t, int64_t i1, int64_t i2, int64_t i3, float *buf) {
    return contiguous(t) ? (float *)gr_row(t, i1, i2, i3) : buf;
}

static void store_row(const gr_tensor *t, int64_t i1, int64_t i2, int64_t i3, const float *y) {
    if (contiguous(t)) return;
    char *p = gr_row(t, i1, i2, i3);
    for (int64_t i = 0; i < t->ne[0]; i++) *(float *)(p + i * t->nb[0]) = y[i];
}

/* scratch for a strided src row, or a strided dst row when with_dst (they may share it) */
static int64_t rows_wsize(const gr_op *op, int nth, bool with_dst) {
    bool strided = !contiguous(&op->src[0]) || (with_dst && !contiguous(&op->dst));
    return strided ? nth * row_bytes(op->src[0].ne[0]) : 0;
}

/* ======================================================================================
 * double-accumulated row sums (sum of x, sum of float32 x*x)
 * ====================================================================================== */

static double sum_scalar(const float *x, int64_t n, bool squares) {
    double s = 0.0;
    if (squares)
        for (int64_t i = 0; i < n; i++) s += (double)(x[i] * x[i]);
    else
        for (int64_t i = 0; i < n; i++) s += (double)x[i];
    return s;
}

#if GR_X86
AVX2 static __m256d add_f32_as_f64_avx2(__m256d acc_lo, __m256 v, __m256d *acc_hi) {
    *acc_hi = _mm256_add_pd(*acc_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return _mm256_add_pd(acc_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
}

AVX2 static double hsum_avx2(__m256d a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* lanes [0, rem) all ones: the mask of a partial vector of rem (< 8) elements */
static const int32_t TAIL_MASK[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
AVX2 static __m256i tail_mask_avx2(int64_t rem) { return _mm256_loadu_si256((const __m256i *)(TAIL_MASK + 8 - rem)); }

AVX2 static double sum_avx2(const float *x, int64_t n, bool squares) {
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        lo = add_f32_as_f64_avx2(lo, squares ? _mm256_mul_ps(v, v) : v, &hi);
    }
    if (i < n) { /* masked-off lanes load as 0 */
        __m256 v = _mm256_maskload_ps(x + i, tail_mask_avx2(n - i));
        lo = add_f32_as_f64_avx2(lo, squares ? _mm256_mul_ps(v, v) : v, &hi);
    }
    return hsum_avx2(_mm256_add_pd(lo, hi));
}

AVX512 static __mmask16 tail_mask_avx512(int64_t rem) { return (__mmask16)((1u << rem) - 1); }

AVX512 static double sum_avx512(const float *x, int64_t n, bool squares) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __m512 v = i + 16 <= n ? _mm512_loadu_ps(x + i) : _mm512_maskz_loadu_ps(tail_mask_avx512(n - i), x + i);
        if (squares) v = _mm512_mul_ps(v, v);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}
#endif

static double row_sum(const float *x, int64_t n, bool squares) {
#if GR_X86
    if (gr_has_avx512) return sum_avx512(x, n, squares);
    if (gr_has_avx2) return sum_avx2(x, n, squares);
#endif
    return sum_scalar(x, n, squares);
}

/* ======================================================================================
 * y = x * s (the norms' last step)
 * ====================================================================================== */

static void scale_scalar(const float *x, float s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s;
}

#if GR_X86
AVX2 static void scale_avx2(const float *x, float s, float *y, int64_t n) {
    __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) y[i] = x[i] * s;
}

AVX512 static void scale_avx512(const float *x, float s, float *y, int64_t n) {
    __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = i + 16 <= n ? (__mmask16)0xffff : tail_mask_avx512(n - i);
        _mm512_mask_storeu_ps(y + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vs));
    }
}
#endif

static void row_scale(const float *x, float s, float *y, int64_t n) {
#if GR_X86
    if (gr_has_avx512) { scale_avx512(x, s, y, n); return; }
    if (gr_has_avx2) { scale_avx2(x, s, y, n); return; }
#endif
    scale_scalar(x, s, y, n);
}

/* ======================================================================================
 * sum_rows, mean, rms_norm, l2_norm
 * ====================================================================================== */

/* the float32 result of a row -> one element of dst [1, ne1, ne2, ne3] */
static void reduce_rows(const gr_op *op, const gr_thread *th, bool mean) {
    const gr_tensor *a = &op->src[0];
    int64_t n = a->ne[0], r0, r1, i1, i2, i3;
    float *buf = (float *)scratch(op, th, n, 1);
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        float s = (float)row_sum(load_row(a, i1, i2, i3, buf), n, false);
        *(float *)gr_row(&op->dst, i1, i2, i3) = mean ? s / (float)n : s;
    }
}

void gr_k_sum_rows(const gr_op *op, const gr_thread *th) { reduce_rows(op, th, false); }
void gr_k_mean(const gr_op *op, const gr_thread *th) { reduce_rows(op, th, true); }
int64_t gr_w_sum_rows(const gr_op *op, int nth) { return rows_wsize(op, nth, false); }
int64_t gr_w_mean(const gr_op *op, int nth) { return rows_wsize(op, nth, false); }

/* rms: x / sqrt(mean(x^2) + eps); l2: x / max(||x||, eps) (a NaN norm stays NaN, as np.maximum) */
static float norm_scale(double sumsq, int64_t n, float eps, bool rms) {
    if (rms) return 1.0f / sqrtf((float)(sumsq / (double)n) + eps);
    float norm = sqrtf((float)sumsq);
    return 1.0f / (norm < eps ? eps : norm);
}

static void norm_rows(const gr_op *op, const gr_thread *th, bool rms) {
    const gr_tensor *a = &op->src[0], *d = &op->dst;
    int64_t n = a->ne[0], r0, r1, i1, i2, i3;
    float *buf = (float *)scratch(op, th, n, 1);
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        const float *x = load_row(a, i1, i2, i3, buf);
        float *y = out_row(d, i1, i2, i3, buf);
        row_scale(x, norm_scale(row_sum(x, n, true), n, op->fp[0], rms), y, n);
        store_row(d, i1, i2, i3, y);
    }
}

void gr_k_rms_norm(const gr_op *op, const gr_thread *th) { norm_rows(op, th, true); }
void gr_k_l2_norm(const gr_op *op, const gr_thread *th) { norm_rows(op, th, false); }
int64_t gr_w_rms_norm(const gr_op *op, int nth) { return rows_wsize(op, nth, true); }
int64_t gr_w_l2_norm(const gr_op *op, int nth) { return rows_wsize(op, nth, true); }

/* ======================================================================================
 * soft_max: y = softmax(x*scale + slope*mask)
 * ====================================================================================== */

/* one row's mask: float32 (mf) or float16 (mh) values, or none (both NULL) */
typedef struct {
    const float *mf;
    const uint16_t *mh;
    float slope;
} sm_mask;

static float mask_at(const sm_mask *m, int64_t i) { return m->mf ? m->mf[i] : gr_f16_to_f32(m->mh[i]); }

/* y = e * (float)(1/sum) where sum is the double sum of e = exp(w - max), w already in y */
static void softmax_scalar(const float *x, const sm_mask *m, float scale, float *y, int64_t n) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        float w = x[i] * scale;
        if (m->mf || m->mh) w += m->slope * mask_at(m, i);
        y[i] = w;
        max = w > max ? w : max; /* a NaN w makes the sum NaN below: every output NaN, as the reference */
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        y[i] = expf(y[i] - max);
        sum += (double)y[i];
    }
    scale_scalar(y, (float)(1.0 / sum), y, n);
}

#if GR_X86
/* exp(x) = 2^k * exp(r), k = round(x / ln2), r = x - k*ln2 (Cody-Waite split); exp(r) on
 * |r| <= ln2/2 by Cephes' degree-7 polynomial (about 1 ulp). x is clamped so that -inf gives
 * an exact 0 (2^-160 underflows) and large x gives inf; NaN propagates. */
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

AVX512 static __m512 exp_avx512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x); /* max/min(c, x) return x when x is NaN */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k); /* p * 2^k, with correct underflow to denormals and 0 */
}

/* AVX2 has no scalef: 2^k is built in the exponent field, so results below FLT_MIN flush to 0
 * (the reference keeps denormals there; they are below any tolerance that matters) */
AVX2 static __m256 exp_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.72283f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), isnan_ = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_LN2_HI), xc);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* k in [-126, 128]: split 2^k = 2^(k/2) * 2^(k - k/2) so k = 128 (x near the top) stays finite */
    __m256i ki = _mm256_cvtps_epi32(k), k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, _mm256_set1_epi32(127)), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(127)), 23));
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), under);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, isnan_);
}

AVX2 static float hmax_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* w = x*scale (+ slope*mask) of 8 elements; a partial vector loads its lanes [0, rem) */
AVX2 static __m256 sm_logits_avx2(const float *x, const sm_mask *m, __m256 vscale, int64_t i, int64_t rem) {
    __m256 w, mv;
    if (rem == 8) {
        w = _mm256_mul_ps(_mm256_loadu_ps(x + i), vscale);
        if (m->mf) mv = _mm256_loadu_ps(m->mf + i);
        else if (m->mh) mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m->mh + i)));
        else return w;
    } else {
        w = _mm256_mul_ps(_mm256_maskload_ps(x + i, tail_mask_avx2(rem)), vscale);
        if (!m->mf && !m->mh) return w;
        float t[8] = {0};
        for (int64_t j = 0; j < rem; j++) t[j] = mask_at(m, i + j);
        mv = _mm256_loadu_ps(t);
    }
    return _mm256_add_ps(w, _mm256_mul_ps(_mm256_set1_ps(m->slope), mv));
}

AVX2 static void softmax_avx2(const float *x, const sm_mask *m, float scale, float *y, int64_t n) {
    const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    for (int64_t i = 0; i < n; i += 8) {
        int64_t rem = n - i < 8 ? n - i : 8;
        __m256 w = sm_logits_avx2(x, m, vscale, i, rem);
        if (rem == 8) {
            _mm256_storeu_ps(y + i, w);
        } else {
            __m256i k = tail_mask_avx2(rem);
            _mm256_maskstore_ps(y + i, k, w);
            w = _mm256_blendv_ps(ninf, w, _mm256_castsi256_ps(k));
        }
        vmax = _mm256_max_ps(vmax, w);
    }
    const __m256 vm = _mm256_set1_ps(hmax_avx2(vmax));
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (int64_t i = 0; i < n; i += 8) {
        if (n - i >= 8) {
            __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(y + i), vm));
            _mm256_storeu_ps(y + i, e);
            lo = add_f32_as_f64_avx2(lo, e, &hi);
        } else {
            __m256i k = tail_mask_avx2(n - i);
            __m256 e = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(y + i, k), vm));
            e = _mm256_and_ps(e, _mm256_castsi256_ps(k)); /* inactive lanes add 0 */
            _mm256_maskstore_ps(y + i, k, e);
            lo = add_f32_as_f64_avx2(lo, e, &hi);
        }
    }
    scale_avx2(y, (float)(1.0 / hsum_avx2(_mm256_add_pd(lo, hi))), y, n);
}

AVX512 static __m512 sm_logits_avx512(const float *x, const sm_mask *m, __m512 vscale, int64_t i, __mmask16 k) {
    __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vscale), mv;
    if (m->mf) mv = _mm512_maskz_loadu_ps(k, m->mf + i);
    else if (m->mh) mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, m->mh + i));
    else return w;
    return _mm512_add_ps(w, _mm512_mul_ps(_mm512_set1_ps(m->slope), mv));
}

AVX512 static void softmax_avx512(const float *x, const sm_mask *m, float scale, float *y, int64_t n) {
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = i + 16 <= n ? (__mmask16)0xffff : tail_mask_avx512(n - i);
        __m512 w = sm_logits_avx512(x, m, vscale, i, k);
        _mm512_mask_storeu_ps(y + i, k, w);
        vmax = _mm512_mask_max_ps(vmax, k, vmax, w);
    }
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = i + 16 <= n ? (__mmask16)0xffff : tail_mask_avx512(n - i);
        __m512 e = _mm512_maskz_mov_ps(k, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, y + i), vm)));
        _mm512_mask_storeu_ps(y + i, k, e);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    scale_avx512(y, (float)(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))), y, n);
}
#endif

static void softmax_row(const float *x, const sm_mask *m, float scale, float *y, int64_t n) {
#if GR_X86
    if (gr_has_avx512) { softmax_avx512(x, m, scale, y, n); return; }
    if (gr_has_avx2) { softmax_avx2(x, m, scale, y, n); return; }
#endif
    softmax_scalar(x, m, scale, y, n);
}

/* the mask row of a's row (i1, i2, i3): rows i1 of the mask, tiled over dims 2 and 3; strided
 * masks are gathered into buf as float32 */
static sm_mask mask_row(const gr_op *op, int64_t i1, int64_t i2, int64_t i3, float *buf) {
    sm_mask m = {NULL, NULL, 1.0f};
    const gr_tensor *t = &op->src[1];
    if (op->n_src < 2 || t->data == NULL) return m;
    const char *p = gr_row(t, i1, i2 % t->ne[2], i3 % t->ne[3]);
    int es = t->type == GR_F16 ? 2 : 4;
    if (t->nb[0] != es) {
        for (int64_t i = 0; i < op->src[0].ne[0]; i++) buf[i] = gr_load_f(p + i * t->nb[0], t->type);
        m.mf = buf;
    } else if (t->type == GR_F16) {
        m.mh = (const uint16_t *)p;
    } else {
        m.mf = (const float *)p;
    }
    m.slope = op->aux ? ((const float *)op->aux)[i2] : 1.0f;
    return m;
}

/* scratch rows per thread: [0] strided src/dst row, [1] strided mask row */
void gr_k_soft_max(const gr_op *op, const gr_thread *th) {
    const gr_tensor *a = &op->src[0], *d = &op->dst;
    int64_t n = a->ne[0], r0, r1, i1, i2, i3;
    float *buf = (float *)scratch(op, th, n, 2), *mbuf = buf + row_bytes(n) / 4;
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        sm_mask m = mask_row(op, i1, i2, i3, mbuf);
        const float *x = load_row(a, i1, i2, i3, buf);
        float *y = out_row(d, i1, i2, i3, buf);
        softmax_row(x, &m, op->fp[0], y, n);
        store_row(d, i1, i2, i3, y);
    }
}

int64_t gr_w_soft_max(const gr_op *op, int nth) {
    const gr_tensor *m = &op->src[1];
    bool mask_strided = op->n_src > 1 && m->data && m->nb[0] != (m->type == GR_F16 ? 2 : 4);
    bool strided = rows_wsize(op, nth, true) > 0 || mask_strided;
    return strided ? nth * 2 * row_bytes(op->src[0].ne[0]) : 0;
}

/* ======================================================================================
 * argmax, argsort, top_k
 * ====================================================================================== */

static float elem(const gr_tensor *t, const char *row, int64_t i) { return *(const float *)(row + i * t->nb[0]); }
static int32_t *i32_at(const gr_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return (int32_t *)gr_ptr(t, i0, i1, i2, i3);
}

/* the first index of the largest value; a NaN counts as largest (numpy's argmax) */
static int32_t row_argmax(const gr_tensor *a, const char *row) {
    float best = elem(a, row, 0);
    int32_t at = 0;
    if (best != best) return 0;
    for (int64_t i = 1; i < a->ne[0]; i++) {
        float v = elem(a, row, i);
        if (v != v) return (int32_t)i;
        if (v > best) best = v, at = (int32_t)i;
    }
    return at;
}

/* dst is I32 [ne1, ne2, ne3]: row (i1, i2, i3) of a writes element (i1, i2, i3) */
void gr_k_argmax(const gr_op *op, const gr_thread *th) {
    const gr_tensor *a = &op->src[0];
    int64_t r0, r1, i1, i2, i3;
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        *i32_at(&op->dst, i1, i2, i3, 0) = row_argmax(a, gr_row(a, i1, i2, i3));
    }
}

/* Sorting works on keys (x, or -x for descending: exact) in ascending order, NaNs last.
 * Ties go to the lower index, so `precedes` is a total order: every sort and selection
 * below gives the one stable order, whatever the order it visits elements in. */
static bool before(float a, float b) { return a < b || (b != b && a == a); }

static bool precedes(const float *key, int32_t a, int32_t b) {
    return before(key[a], key[b]) || (!before(key[b], key[a]) && a < b);
}

/* merge sort of idx[0, n) (tmp: n ints of scratch), insertion-sorted runs of 16 first */
static void sort_indices(const float *key, int32_t *idx, int32_t *tmp, int64_t n) {
    const int64_t RUN = 16;
    for (int64_t s = 0; s < n; s += RUN) {
        int64_t e = s + RUN < n ? s + RUN : n;
        for (int64_t i = s + 1; i < e; i++) {
            int32_t v = idx[i];
            int64_t j = i;
            for (; j > s && precedes(key, v, idx[j - 1]); j--) idx[j] = idx[j - 1];
            idx[j] = v;
        }
    }
    int32_t *from = idx, *to = tmp;
    for (int64_t w = RUN; w < n; w *= 2) {
        for (int64_t s = 0; s < n; s += 2 * w) {
            int64_t m = s + w < n ? s + w : n, e = s + 2 * w < n ? s + 2 * w : n;
            int64_t i = s, j = m, o = s;
            while (i < m && j < e) to[o++] = precedes(key, from[j], from[i]) ? from[j++] : from[i++];
            while (i < m) to[o++] = from[i++];
            while (j < e) to[o++] = from[j++];
        }
        int32_t *t = from; from = to; to = t;
    }
    if (from != idx) memcpy(idx, from, (size_t)n * sizeof(int32_t));
}

/* restore the heap below i: every parent comes after its children (the root is the last) */
static void sift_down(const float *key, int32_t *heap, int64_t k, int64_t i) {
    for (int64_t c; (c = 2 * i + 1) < k; i = c) {
        if (c + 1 < k && precedes(key, heap[c], heap[c + 1])) c++;
        if (!precedes(key, heap[i], heap[c])) return;
        int32_t t = heap[i]; heap[i] = heap[c]; heap[c] = t;
    }
}

/* the first k of the sorted order, sorted: a heap of the k best so far whose root is the one
 * to drop next; most candidates are rejected by one comparison with it. O(n log k). */
static void select_top(const float *key, int32_t *top, int32_t *tmp, int64_t n, int64_t k) {
    for (int64_t i = 0; i < k; i++) top[i] = (int32_t)i;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(key, top, k, i);
    float last = key[top[0]];
    for (int64_t i = k; i < n; i++) {
        if (!before(key[i], last)) continue; /* i is above every index in the heap: ties lose */
        top[0] = (int32_t)i;
        sift_down(key, top, k, 0);
        last = key[top[0]];
    }
    sort_indices(key, top, tmp, k);
}

/* per thread: keys (n floats), idx (n ints), tmp (n ints) */
static void sort_rows(const gr_op *op, const gr_thread *th, bool desc, int64_t k) {
    const gr_tensor *a = &op->src[0], *d = &op->dst;
    int64_t n = a->ne[0], r0, r1, i1, i2, i3;
    float *key = (float *)scratch(op, th, n, 3);
    int32_t *idx = (int32_t *)(key + row_bytes(n) / 4), *tmp = idx + row_bytes(n) / 4;
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        const float *x = load_row(a, i1, i2, i3, key);
        const float sign = desc ? -1.0f : 1.0f; /* exact, and -NaN is still NaN */
        for (int64_t i = 0; i < n; i++) key[i] = sign * x[i];
        if (k < n) {
            select_top(key, idx, tmp, n, k);
        } else {
            for (int64_t i = 0; i < n; i++) idx[i] = (int32_t)i;
            sort_indices(key, idx, tmp, n);
        }
        for (int64_t i = 0; i < k; i++) *i32_at(d, i, i1, i2, i3) = idx[i];
    }
}

void gr_k_argsort(const gr_op *op, const gr_thread *th) { sort_rows(op, th, op->ip[0] == 1, op->src[0].ne[0]); }
void gr_k_top_k(const gr_op *op, const gr_thread *th) { sort_rows(op, th, true, op->ip[0]); }
int64_t gr_w_argsort(const gr_op *op, int nth) { return nth * 3 * row_bytes(op->src[0].ne[0]); }
int64_t gr_w_top_k(const gr_op *op, int nth) { return nth * 3 * row_bytes(op->src[0].ne[0]); }
