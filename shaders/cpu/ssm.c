/* State-space kernels: ssm_conv (causal depthwise conv) and gated_delta_net (the gated delta
 * rule, writing its rollback snapshots in the same pass that computes the state).
 * Numerics follow backends/ref/k_ssm.py (ggml-cpu ops.cpp), in float32. */
#include "graphir_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif

#define GR_ALIGN16(n) (((n) + 15) & ~(int64_t)15) /* floats, so 64-byte aligned blocks */

/* ======================================================================================
 * ssm_conv: sx [d_conv-1+n_tokens, channels, n_seqs], c [d_conv, channels]
 *        -> dst [channels, n_tokens, n_seqs], dst[ch, t, s] = sum_k sx[t+k, ch, s] * c[k, ch]
 * ====================================================================================== */

int64_t gr_w_ssm_conv(const gr_op *op, int nth) {
    int64_t n = GR_ALIGN16(op->src[0].ne[0]) + GR_ALIGN16(op->dst.ne[1]);
    return (int64_t)nth * n * (int64_t)sizeof(float);
}

/* Threads take (seq, channel) pairs; each pair's window sum runs over k in order, as the
 * reference does (a float32 sum from 0, never a reassociated dot). */
void gr_k_ssm_conv(const gr_op *op, const gr_thread *th) {
    const gr_tensor *sx = &op->src[0], *c = &op->src[1], *dst = &op->dst;
    const int64_t d_conv = c->ne[0], channels = c->ne[1], n_tokens = dst->ne[1], n_seqs = dst->ne[2];
    float *x = (float *)op->wdata + (int64_t)th->ith * (GR_ALIGN16(sx->ne[0]) + GR_ALIGN16(n_tokens));
    float *acc = x + GR_ALIGN16(sx->ne[0]);
    int64_t b, e;
    gr_chunk(channels * n_seqs, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) {
        const int64_t ch = u % channels, s = u / channels;
        const char *xrow = gr_row(sx, ch, s, 0);
        for (int64_t i = 0; i < sx->ne[0]; i++) x[i] = *(const float *)(xrow + i * sx->nb[0]);
        for (int64_t t = 0; t < n_tokens; t++) acc[t] = 0.0f;
        for (int64_t k = 0; k < d_conv; k++) {
            const float ck = *(const float *)gr_ptr(c, k, ch, 0, 0);
            for (int64_t t = 0; t < n_tokens; t++) acc[t] += x[t + k] * ck;
        }
        for (int64_t t = 0; t < n_tokens; t++) *(float *)gr_ptr(dst, ch, t, s, 0) = acc[t];
    }
}

/* ======================================================================================
 * gated_delta_net (see graphir/builders.py): the state of v head h of seq s is kept as
 * M[j][i] = S[i][j] (its memory layout: row j of M is column j of S, contiguous in i), so a
 * token's whole update for one j touches only row j:
 *     row *= exp(g);  sk = row . k;  d = beta (v[j] - sk);  row += d k;  o[j] = (row . q) / sqrt(S_v)
 * One pass over the rows per token, vectorized over i; threads take (head, seq) pairs.
 * ====================================================================================== */

/* One row of one token. gv: per-channel decay exp(g[i]) or NULL (then the scalar gs). */
typedef float (*gdn_row_fn)(float *row, const float *gv, float gs, const float *k, const float *q, float vj,
                            float beta, int64_t n);

static float gdn_row_scalar(float *row, const float *gv, float gs, const float *k, const float *q, float vj,
                            float beta, int64_t n) {
    float sk[4] = {0, 0, 0, 0}, o[4] = {0, 0, 0, 0}; /* 4 partial sums: no long add chain */
    for (int64_t i = 0; i < n; i++) {
        float x = row[i] * (gv ? gv[i] : gs);
        row[i] = x;
        sk[i & 3] += x * k[i];
    }
    const float d = (vj - ((sk[0] + sk[1]) + (sk[2] + sk[3]))) * beta;
    for (int64_t i = 0; i < n; i++) {
        float x = row[i] + d * k[i];
        row[i] = x;
        o[i & 3] += x * q[i];
    }
    return (o[0] + o[1]) + (o[2] + o[3]);
}

#ifdef GR_X86
__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float gdn_row_avx2(float *row, const float *gv, float gs,
                                                              const float *k, const float *q, float vj,
                                                              float beta, int64_t n) {
    const int64_t n8 = n & ~(int64_t)7;
    __m256 acc = _mm256_setzero_ps(), g = _mm256_set1_ps(gs);
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + i), gv ? _mm256_loadu_ps(gv + i) : g);
        _mm256_storeu_ps(row + i, x);
        acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(k + i), acc);
    }
    float sk = hsum256(acc);
    for (int64_t i = n8; i < n; i++) {
        row[i] *= gv ? gv[i] : gs;
        sk += row[i] * k[i];
    }
    const float d = (vj - sk) * beta;
    const __m256 dv = _mm256_set1_ps(d);
    acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 x = _mm256_fmadd_ps(dv, _mm256_loadu_ps(k + i), _mm256_loadu_ps(row + i));
        _mm256_storeu_ps(row + i, x);
        acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(q + i), acc);
    }
    float o = hsum256(acc);
    for (int64_t i = n8; i < n; i++) {
        row[i] += d * k[i];
        o += row[i] * q[i];
    }
    return o;
}

/* masked tails: any S_v runs at full width */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static float gdn_row_avx512(float *row, const float *gv,
                                                                                 float gs, const float *k,
                                                                                 const float *q, float vj,
                                                                                 float beta, int64_t n) {
    __m512 acc = _mm512_setzero_ps(), g = _mm512_set1_ps(gs);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row + i), gv ? _mm512_maskz_loadu_ps(m, gv + i) : g);
        _mm512_mask_storeu_ps(row + i, m, x);
        acc = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, k + i), acc);
    }
    const float d = (vj - _mm512_reduce_add_ps(acc)) * beta;
    const __m512 dv = _mm512_set1_ps(d);
    acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_fmadd_ps(dv, _mm512_maskz_loadu_ps(m, k + i), _mm512_maskz_loadu_ps(m, row + i));
        _mm512_mask_storeu_ps(row + i, m, x);
        acc = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, q + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}
#endif

static gdn_row_fn gdn_row_pick(void) {
#ifdef GR_X86
    if (gr_has_avx512) return gdn_row_avx512;
    if (gr_has_avx2) return gdn_row_avx2;
#endif
    return gdn_row_scalar;
}

/* per thread: the state M [S_v * S_v] and the token's q, k, v, exp(g) rows [S_v] each */
static int64_t gdn_thread_floats(int64_t S_v) { return GR_ALIGN16(S_v * S_v) + 4 * GR_ALIGN16(S_v); }

int64_t gr_w_gated_delta_net(const gr_op *op, int nth) {
    return (int64_t)nth * gdn_thread_floats(op->src[2].ne[0]) * (int64_t)sizeof(float);
}

/* a strided F32 vector of n elements (element stride nb0 bytes) into a contiguous buffer */
static void gather_f32(float *out, const char *p, int64_t nb0, int64_t n) {
    if (nb0 == sizeof(float)) {
        memcpy(out, p, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = *(const float *)(p + i * nb0);
}

/* M of (h, s) into snapshot slot `slot`: row j of M is segment seg = (s H_v + h) S_v + j of
 * the slot's flat [S_v * n_seqs, S_v * H_v] region, i.e. dst row seg / H_v, column (seg % H_v) S_v */
static void gdn_write_state(const gr_tensor *dst, const float *M, int64_t slot, int64_t h, int64_t s,
                            int64_t S_v, int64_t H_v, int64_t n_seqs, int64_t rows_o) {
    const int64_t r0 = rows_o + slot * S_v * n_seqs;
    for (int64_t j = 0; j < S_v; j++) {
        const int64_t seg = (s * H_v + h) * S_v + j;
        char *p = gr_ptr(dst, (seg % H_v) * S_v, r0 + seg / H_v, 0, 0);
        if (dst->nb[0] == sizeof(float)) {
            memcpy(p, M + j * S_v, (size_t)S_v * sizeof(float));
        } else {
            for (int64_t i = 0; i < S_v; i++) *(float *)(p + i * dst->nb[0]) = M[j * S_v + i];
        }
    }
}

void gr_k_gated_delta_net(const gr_op *op, const gr_thread *th) {
    const gr_tensor *q = &op->src[0], *k = &op->src[1], *v = &op->src[2], *g = &op->src[3], *beta = &op->src[4],
                    *state = &op->src[5], *dst = &op->dst;
    const int64_t S_v = v->ne[0], H_v = v->ne[1], n_tokens = v->ne[2], n_seqs = v->ne[3], H_k = k->ne[1];
    const int64_t snapshots = op->ip[0], rows_o = n_tokens * n_seqs;
    const int per_channel = g->ne[0] != 1;
    const float scale = 1.0f / sqrtf((float)S_v);
    const gdn_row_fn row_step = gdn_row_pick();

    float *M = (float *)op->wdata + (int64_t)th->ith * gdn_thread_floats(S_v);
    float *qt = M + GR_ALIGN16(S_v * S_v), *kt = qt + GR_ALIGN16(S_v), *vt = kt + GR_ALIGN16(S_v);
    float *gv = vt + GR_ALIGN16(S_v);

    int64_t b, e;
    gr_chunk(H_v * n_seqs, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) {
        const int64_t h = u % H_v, s = u / H_v, hk = h % H_k; /* v head h reads q/k head h % H_k */
        for (int64_t j = 0; j < S_v; j++) gather_f32(M + j * S_v, gr_row(state, j, h, s), state->nb[0], S_v);
        for (int64_t t = 0; t < n_tokens; t++) {
            gather_f32(qt, gr_row(q, hk, t, s), q->nb[0], S_v);
            gather_f32(kt, gr_row(k, hk, t, s), k->nb[0], S_v);
            gather_f32(vt, gr_row(v, h, t, s), v->nb[0], S_v);
            const char *gp = gr_row(g, h, t, s);
            float gs = 0.0f;
            if (per_channel) {
                for (int64_t i = 0; i < S_v; i++) gv[i] = expf(*(const float *)(gp + i * g->nb[0]));
            } else {
                gs = expf(*(const float *)gp);
            }
            const float bt = *(const float *)gr_row(beta, h, t, s);
            char *orow = gr_ptr(dst, h * S_v, s * n_tokens + t, 0, 0);
            for (int64_t j = 0; j < S_v; j++) {
                float o = row_step(M + j * S_v, per_channel ? gv : NULL, gs, kt, qt, vt[j], bt, S_v);
                *(float *)(orow + j * dst->nb[0]) = o * scale;
            }
            const int64_t slot = n_tokens - 1 - t;
            if (slot < snapshots) gdn_write_state(dst, M, slot, h, s, S_v, H_v, n_seqs, rows_o);
        }
    }
}
