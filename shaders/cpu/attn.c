/* flash_attn_ext: fused attention softmax(scale q k^T + slope mask) v with an online softmax,
 * numerics as backends/ref/k_attn.py (float32 throughout, K/V widened in the inner loop).
 *
 * q [D, n_q, H, n_seq] F32; k [D, n_kv, H_kv, n_seq_kv], v [Dv, n_kv, H_kv, n_seq_kv] F32/F16;
 * mask [n_kv, >=n_q, m2, m3] F32/F16 (broadcast over heads / seqs); dst [Dv, H, n_q, n_seq] F32.
 * q head h reads kv head h / (H / H_kv), q seq s reads kv seq s / (n_seq / n_seq_kv).
 *
 * Work: the query rows (iq, h, s) that read the same kv head and seq form a group; a thread
 * takes a tile of up to FA_TILE rows of one group and streams K/V once for the whole tile, so a
 * K/V row is read from memory once per tile, not once per query head (GQA decode). Each row
 * keeps its own running max, sum and accumulator and does exactly the same arithmetic whatever
 * tile it sits in: results are batch-invariant.
 */
#include "graphir_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif

#define FA_TILE 8
#define FA_A16(n) (((n) + 15) & ~(int64_t)15) /* floats: 64-byte aligned blocks */

/* q . k over n elements (k F32 or F16, contiguous) */
typedef float (*fa_dot_fn)(const float *q, const void *k, int64_t n);
/* acc = a acc + b v over n elements (v F32 or F16, contiguous) */
typedef void (*fa_mad_fn)(float *acc, const void *v, float a, float b, int64_t n);

/* ---- portable ---- */
static float dot_f32_scalar(const float *q, const void *kp, int64_t n) {
    const float *k = kp;
    float s[4] = {0, 0, 0, 0}; /* 4 partial sums: no long add chain */
    for (int64_t i = 0; i < n; i++) s[i & 3] += q[i] * k[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}
static float dot_f16_scalar(const float *q, const void *kp, int64_t n) {
    const uint16_t *k = kp;
    float s[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++) s[i & 3] += q[i] * gr_f16_to_f32(k[i]);
    return (s[0] + s[1]) + (s[2] + s[3]);
}
static void mad_f32_scalar(float *acc, const void *vp, float a, float b, int64_t n) {
    const float *v = vp;
    for (int64_t i = 0; i < n; i++) acc[i] = a * acc[i] + b * v[i];
}
static void mad_f16_scalar(float *acc, const void *vp, float a, float b, int64_t n) {
    const uint16_t *v = vp;
    for (int64_t i = 0; i < n; i++) acc[i] = a * acc[i] + b * gr_f16_to_f32(v[i]);
}

#ifdef GR_X86
/* ---- AVX2 + FMA + F16C ---- */
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
T_AVX2 static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
T_AVX2 static inline __m256 ld8_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

T_AVX2 static float dot_f32_avx2(const float *q, const void *kp, int64_t n) {
    const float *k = kp;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += q[i] * k[i];
    return s;
}
T_AVX2 static float dot_f16_avx2(const float *q, const void *kp, int64_t n) {
    const uint16_t *k = kp;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8_f16(k + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), ld8_f16(k + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8_f16(k + i), a0);
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += q[i] * gr_f16_to_f32(k[i]);
    return s;
}
T_AVX2 static void mad_f32_avx2(float *acc, const void *vp, float a, float b, int64_t n) {
    const float *v = vp;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(vb, _mm256_loadu_ps(v + i), _mm256_mul_ps(va, _mm256_loadu_ps(acc + i))));
    for (; i < n; i++) acc[i] = a * acc[i] + b * v[i];
}
T_AVX2 static void mad_f16_avx2(float *acc, const void *vp, float a, float b, int64_t n) {
    const uint16_t *v = vp;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(vb, ld8_f16(v + i), _mm256_mul_ps(va, _mm256_loadu_ps(acc + i))));
    for (; i < n; i++) acc[i] = a * acc[i] + b * gr_f16_to_f32(v[i]);
}

/* ---- AVX-512: masked tails, so any D runs at full width ---- */
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
T_512 static inline __mmask16 tail16(int64_t left) { return left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1); }
T_512 static inline __m512 ld16_f16(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

T_512 static float dot_f32_avx512(const float *q, const void *kp, int64_t n) {
    const float *k = kp;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(k + i + 16), a1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, k + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
T_512 static float dot_f16_avx512(const float *q, const void *kp, int64_t n) {
    const uint16_t *k = kp;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), ld16_f16(k + i, 0xffff), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), ld16_f16(k + i + 16, 0xffff), a1);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), ld16_f16(k + i, m), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
T_512 static void mad_f32_avx512(float *acc, const void *vp, float a, float b, int64_t n) {
    const float *v = vp;
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        __m512 x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, v + i), _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, acc + i)));
        _mm512_mask_storeu_ps(acc + i, m, x);
    }
}
T_512 static void mad_f16_avx512(float *acc, const void *vp, float a, float b, int64_t n) {
    const uint16_t *v = vp;
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        __m512 x = _mm512_fmadd_ps(vb, ld16_f16(v + i, m), _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, acc + i)));
        _mm512_mask_storeu_ps(acc + i, m, x);
    }
}
#endif

/* the dot / mad for rows of `type` read in place (F32/F16 with unit stride); others are
 * first gathered into an F32 row */
static fa_dot_fn pick_dot(int f16) {
#ifdef GR_X86
    if (gr_has_avx512) return f16 ? dot_f16_avx512 : dot_f32_avx512;
    if (gr_has_avx2) return f16 ? dot_f16_avx2 : dot_f32_avx2;
#endif
    return f16 ? dot_f16_scalar : dot_f32_scalar;
}
static fa_mad_fn pick_mad(int f16) {
#ifdef GR_X86
    if (gr_has_avx512) return f16 ? mad_f16_avx512 : mad_f32_avx512;
    if (gr_has_avx2) return f16 ? mad_f16_avx2 : mad_f32_avx2;
#endif
    return f16 ? mad_f16_scalar : mad_f32_scalar;
}

static int fa_direct(const gr_tensor *t) {
    return (t->type == GR_F32 && t->nb[0] == 4) || (t->type == GR_F16 && t->nb[0] == 2);
}

/* everything a tile needs, resolved once per op */
typedef struct fa_ctx {
    const gr_tensor *q, *k, *v, *mask, *dst;
    int64_t D, Dv, n_q, n_kv, G, rk3;
    float scale, softcap;
    const float *slopes;
    fa_dot_fn dot;
    fa_mad_fn mad;
    int k_direct, v_direct;
} fa_ctx;

/* one query row of a tile: its running max M, sum S, accumulator and mask row */
typedef struct fa_row {
    const float *q;
    float *acc;
    const char *mrow;
    float slope, M, S;
    int64_t iq, h, s;
} fa_row;

/* row j of a K or V cache of (kv head hk, kv seq skv): in place, or gathered into buf as F32 */
static const void *fa_kv_row(const gr_tensor *t, int direct, int64_t j, int64_t hk, int64_t skv, float *buf) {
    const char *p = gr_row(t, j, hk, skv);
    if (direct) return p;
    for (int64_t i = 0; i < t->ne[0]; i++) buf[i] = gr_load_f(p + i * t->nb[0], t->type);
    return buf;
}

/* the online softmax step of one row for score s and value row vj */
static inline void fa_update(const fa_ctx *c, fa_row *r, float s, const void *vj) {
    if (s > r->M) { /* new max: rescale what was summed so far (ms = 0 on the first one) */
        const float ms = expf(r->M - s);
        r->M = s;
        r->S = r->S * ms + 1.0f;
        c->mad(r->acc, vj, ms, 1.0f, c->Dv);
    } else {
        const float vs = expf(s - r->M);
        r->S += vs;
        c->mad(r->acc, vj, 1.0f, vs, c->Dv);
    }
}

/* all n_kv positions for the n rows of a tile reading kv head hk of kv seq skv */
static void fa_tile(const fa_ctx *c, fa_row *rows, int n, int64_t hk, int64_t skv, float *kbuf, float *vbuf) {
    const gr_tensor *mask = c->mask;
    for (int64_t j = 0; j < c->n_kv; j++) {
        const void *kj = NULL, *vj = NULL; /* fetched once per tile, only if some row needs them */
        for (int r = 0; r < n; r++) {
            fa_row *row = &rows[r];
            float mv = 0.0f;
            if (mask) {
                mv = row->slope * gr_load_f(row->mrow + j * mask->nb[0], mask->type);
                if (mv == -INFINITY) continue; /* skipped outright: weighs exactly 0 */
            }
            if (!kj) kj = fa_kv_row(c->k, c->k_direct, j, hk, skv, kbuf);
            float s = c->dot(row->q, kj, c->D) * c->scale;
            if (c->softcap != 0.0f) s = c->softcap * tanhf(s);
            if (mask) s += mv;
            if (!vj) vj = fa_kv_row(c->v, c->v_direct, j, hk, skv, vbuf);
            fa_update(c, row, s, vj);
        }
    }
}

/* scratch per thread: the tile's q rows and accumulators, plus one gathered K and V row */
static int64_t fa_thread_floats(int64_t D, int64_t Dv) {
    return FA_TILE * (FA_A16(D) + FA_A16(Dv)) + FA_A16(D) + FA_A16(Dv);
}

int64_t gr_w_flash_attn_ext(const gr_op *op, int nth) {
    return (int64_t)nth * fa_thread_floats(op->src[0].ne[0], op->src[2].ne[0]) * (int64_t)sizeof(float);
}

static void fa_init_row(const fa_ctx *c, fa_row *row, int64_t iq, int64_t h, int64_t s, float *qbuf, float *acc) {
    const gr_tensor *q = c->q, *mask = c->mask;
    const char *qp = gr_row(q, iq, h, s);
    for (int64_t i = 0; i < c->D; i++) qbuf[i] = *(const float *)(qp + i * q->nb[0]);
    for (int64_t i = 0; i < c->Dv; i++) acc[i] = 0.0f;
    row->q = qbuf;
    row->acc = acc;
    row->mrow = mask ? gr_row(mask, iq, h % mask->ne[2], s % mask->ne[3]) : NULL;
    row->slope = c->slopes ? c->slopes[h] : 1.0f;
    row->M = -INFINITY;
    row->S = 0.0f;
    row->iq = iq;
    row->h = h;
    row->s = s;
}

/* acc / S into dst (d, h, iq, s); a row that summed nothing (all masked) is zeros, as ggml */
static void fa_store_row(const fa_ctx *c, const fa_row *row) {
    char *p = gr_row(c->dst, row->h, row->iq, row->s);
    for (int64_t d = 0; d < c->Dv; d++)
        *(float *)(p + d * c->dst->nb[0]) = row->S == 0.0f ? 0.0f : row->acc[d] / row->S;
}

void gr_k_flash_attn_ext(const gr_op *op, const gr_thread *th) {
    const gr_tensor *q = &op->src[0], *k = &op->src[1], *v = &op->src[2];
    fa_ctx c = {
        .q = q, .k = k, .v = v, .mask = op->n_src > 3 && op->src[3].data ? &op->src[3] : NULL, .dst = &op->dst,
        .D = q->ne[0], .Dv = v->ne[0], .n_q = q->ne[1], .n_kv = k->ne[1],
        .G = q->ne[2] / k->ne[2], .rk3 = q->ne[3] / k->ne[3],
        .scale = op->fp[0], .softcap = op->fp[2], .slopes = op->aux,
        .k_direct = fa_direct(k), .v_direct = fa_direct(v),
    };
    if (c.softcap != 0.0f) c.scale /= c.softcap; /* as ggml: scale first, then softcap tanh */
    c.dot = pick_dot(c.k_direct && k->type == GR_F16);
    c.mad = pick_mad(c.v_direct && v->type == GR_F16);

    /* groups (kv head, kv seq) of R rows (iq fastest, then q head in the group, then q seq);
     * tiles small enough that every thread gets one when there are few groups */
    const int64_t n_groups = k->ne[2] * k->ne[3], R = c.rk3 * c.G * c.n_q;
    const int64_t per_group = (th->nth + n_groups - 1) / n_groups;
    int64_t T = (R + per_group - 1) / per_group;
    T = T < 1 ? 1 : T > FA_TILE ? FA_TILE : T;
    const int64_t n_tiles = (R + T - 1) / T;

    float *w = (float *)op->wdata + (int64_t)th->ith * fa_thread_floats(c.D, c.Dv);
    float *qbuf = w, *abuf = w + FA_TILE * FA_A16(c.D);
    float *kbuf = abuf + FA_TILE * FA_A16(c.Dv), *vbuf = kbuf + FA_A16(c.D);
    fa_row rows[FA_TILE];

    int64_t b, e;
    gr_chunk(n_groups * n_tiles, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) {
        const int64_t grp = u / n_tiles, r0 = (u % n_tiles) * T;
        const int64_t hk = grp % k->ne[2], skv = grp / k->ne[2];
        const int n = (int)(r0 + T <= R ? T : R - r0);
        for (int i = 0; i < n; i++) {
            const int64_t r = r0 + i, iq = r % c.n_q, hh = (r / c.n_q) % c.G, ss = r / (c.n_q * c.G);
            fa_init_row(&c, &rows[i], iq, hk * c.G + hh, skv * c.rk3 + ss, qbuf + i * FA_A16(c.D),
                        abuf + i * FA_A16(c.Dv));
        }
        fa_tile(&c, rows, n, hk, skv, kbuf, vbuf);
        for (int i = 0; i < n; i++) fa_store_row(&c, &rows[i]);
    }
}
