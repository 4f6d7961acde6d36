/* State-space kernels: ssm_conv (causal depthwise conv) and gated_delta_net (the gated delta
 * rule, writing its rollback snapshots in the same pass that computes the state).
 * Numerics follow backends/ref/k_ssm.py (ggml-cpu ops.cpp), in float32. */
#include "graphir_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif

#define A16(n) (((n) + 15) & ~(int64_t)15) /* floats, so 64-byte aligned blocks */
#define INLINE static inline __attribute__((always_inline))

/* a strided F32 vector of n elements (element stride nb0 bytes) into a contiguous buffer */
static void gather_f32(float *out, const char *p, int64_t nb0, int64_t n) {
    if (nb0 == sizeof(float)) {
        memcpy(out, p, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = *(const float *)(p + i * nb0);
}

/* ======================================================================================
 * ssm_conv: sx [d_conv-1+n_tokens, channels, n_seqs], c [d_conv, channels]
 *        -> dst [channels, n_tokens, n_seqs], dst[ch, t, s] = sum_k sx[t+k, ch, s] * c[k, ch]
 *
 * sx is contiguous along tokens, dst along channels: a thread takes blocks of CONV_CB channels
 * of one seq, computes CONV_TB tokens of each channel (vectorized over tokens) into a small
 * tile and writes the tile out row by row, so neither side is walked across its rows.
 * ====================================================================================== */

#define CONV_CB 16
#define CONV_TB 64

/* per thread: a gathered window, the tile, one channel's sums and its weights */
static int64_t conv_thread_floats(int64_t d_conv) {
    return A16(CONV_TB + d_conv) + CONV_TB * CONV_CB + CONV_TB + A16(d_conv);
}

int64_t gr_w_ssm_conv(const gr_op *op, int nth) {
    return (int64_t)nth * conv_thread_floats(op->src[1].ne[0]) * (int64_t)sizeof(float);
}

typedef float v4f __attribute__((vector_size(16))); /* 4 tokens: one SSE register on the baseline */

static inline v4f load4(const float *p) {
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* acc[t] = sum_k x[t+k] c[k] for t < nt, summed over k in order from 0 in registers (as the
 * reference: a float32 sum, never a reassociated dot), 8 then 4 tokens at a time */
static void conv_window(const float *x, const float *c, int64_t d_conv, int64_t nt, float *acc) {
    int64_t t = 0;
    for (; t + 8 <= nt; t += 8) {
        v4f a0 = {0}, a1 = {0};
        for (int64_t k = 0; k < d_conv; k++) {
            a0 += load4(x + t + k) * c[k];
            a1 += load4(x + t + k + 4) * c[k];
        }
        memcpy(acc + t, &a0, sizeof a0);
        memcpy(acc + t + 4, &a1, sizeof a1);
    }
    for (; t + 4 <= nt; t += 4) { /* verify batches of 4..7 tokens */
        v4f a0 = {0};
        for (int64_t k = 0; k < d_conv; k++) a0 += load4(x + t + k) * c[k];
        memcpy(acc + t, &a0, sizeof a0);
    }
    for (; t < nt; t++) {
        float a = 0.0f;
        for (int64_t k = 0; k < d_conv; k++) a += x[t + k] * c[k];
        acc[t] = a;
    }
}

static void conv_block(const gr_op *op, int64_t s, int64_t ch0, int64_t nch, int64_t t0, int64_t nt, float *w) {
    const gr_tensor *sx = &op->src[0], *c = &op->src[1], *dst = &op->dst;
    const int64_t d_conv = c->ne[0];
    float *x = w, *tile = w + A16(CONV_TB + d_conv), *acc = tile + CONV_TB * CONV_CB, *cw = acc + CONV_TB;
    for (int64_t ic = 0; ic < nch; ic++) {
        const float *xp = (const float *)gr_ptr(sx, t0, ch0 + ic, s, 0), *cp = (const float *)gr_row(c, ch0 + ic, 0, 0);
        if (sx->nb[0] != sizeof(float)) { /* strided: gather the window / the weights */
            gather_f32(x, (const char *)xp, sx->nb[0], nt + d_conv - 1);
            xp = x;
        }
        if (c->nb[0] != sizeof(float)) {
            gather_f32(cw, (const char *)cp, c->nb[0], d_conv);
            cp = cw;
        }
        if (nt == 1) { /* decode: straight into the tile */
            float a = 0.0f;
            for (int64_t k = 0; k < d_conv; k++) a += xp[k] * cp[k];
            tile[ic] = a;
            continue;
        }
        conv_window(xp, cp, d_conv, nt, acc);
        for (int64_t t = 0; t < nt; t++) tile[t * CONV_CB + ic] = acc[t];
    }
    for (int64_t t = 0; t < nt; t++) {
        char *p = gr_ptr(dst, ch0, t0 + t, s, 0);
        for (int64_t ic = 0; ic < nch; ic++) *(float *)(p + ic * dst->nb[0]) = tile[t * CONV_CB + ic];
    }
}

void gr_k_ssm_conv(const gr_op *op, const gr_thread *th) {
    const int64_t channels = op->src[1].ne[1], n_tokens = op->dst.ne[1], n_seqs = op->dst.ne[2];
    const int64_t n_cb = (channels + CONV_CB - 1) / CONV_CB;
    float *w = (float *)op->wdata + (int64_t)th->ith * conv_thread_floats(op->src[1].ne[0]);
    int64_t b, e;
    gr_chunk(n_cb * n_seqs, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) {
        const int64_t s = u / n_cb, ch0 = (u % n_cb) * CONV_CB;
        const int64_t nch = channels - ch0 < CONV_CB ? channels - ch0 : CONV_CB;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += CONV_TB)
            conv_block(op, s, ch0, nch, t0, n_tokens - t0 < CONV_TB ? n_tokens - t0 : CONV_TB, w);
    }
}

/* ======================================================================================
 * gated_delta_net (see graphir/builders.py). The state of v head h of seq s is kept as
 * M[j][i] = S[i][j] (its memory layout: row j of M is column j of S, contiguous in i), so a
 * token's whole update for one j touches only row j:
 *     row *= exp(g);  sk = row . k;  d = beta (v[j] - sk);  row += d k;  o[j] = (row . q) / sqrt(S_v)
 * Rows go GDN_NR at a time (independent dot chains; k and q loaded once for them); every
 * row does the same arithmetic wherever it sits, so results do not depend on the batch.
 *
 * A token reads its rows from `in` and writes them to `out`: token 0 reads the state input;
 * a token that owes a snapshot writes straight into its slot of dst, the others into the
 * thread's scratch M; the next token reads what this one wrote. So the state is read once
 * and every snapshot written once, in the same pass (no copy, no second pass).
 *
 * With a gr_state_io (the state cache fused in, graphir_cpu.h) the state is read from the
 * cache row of each sequence, every token's rows go to M, and a snapshot's rows are copied
 * from M into their cache row (streamed past the caches for large states, see stream_row): no
 * gather before, no scatter after. That is exact as long as no unit can overwrite
 * what another one still reads: every index in range, no two snapshots to one row, no snapshot
 * onto another sequence's source row. A unit overwriting its own source is fine: row j of a
 * state is read by token 0 before any token writes row j anywhere. Otherwise (never in a
 * model's graphs) the kernel does what the fused ops did: gather into src[5], run, scatter
 * dst's snapshot rows in order (the last one wins).
 * ====================================================================================== */

#define GDN_NR 4

/* Rows in[r] -> out[r] (r < nr) of one token; o[r] = row . q after the update (unscaled).
 * gv: per-channel decay exp(g[i]) or NULL (then the scalar gs). vj: v[j..j+nr). */
typedef void (*gdn_rows_fn)(float *const *out, const float *const *in, int nr, const float *gv, float gs,
                            const float *k, const float *q, const float *vj, float beta, int64_t n, float *o);

/* ---- portable: 4 partial sums per dot (lane i % 4), rows one at a time ----
 * Pass 1 only reads the row (sk); pass 2 recomputes in * g and writes the row once. */
static void gdn_row_scalar(float *out, const float *in, const float *gv, float gs, const float *k, const float *q,
                           float vj, float beta, int64_t n, float *o) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += in[i] * (gv ? gv[i] : gs) * k[i];
        s1 += in[i + 1] * (gv ? gv[i + 1] : gs) * k[i + 1];
        s2 += in[i + 2] * (gv ? gv[i + 2] : gs) * k[i + 2];
        s3 += in[i + 3] * (gv ? gv[i + 3] : gs) * k[i + 3];
    }
    float sk[4] = {s0, s1, s2, s3};
    for (; i < n; i++) sk[i & 3] += in[i] * (gv ? gv[i] : gs) * k[i];
    const float d = (vj - ((sk[0] + sk[1]) + (sk[2] + sk[3]))) * beta;
    s0 = s1 = s2 = s3 = 0;
    for (i = 0; i + 4 <= n; i += 4) {
        const float x0 = in[i] * (gv ? gv[i] : gs) + d * k[i];
        const float x1 = in[i + 1] * (gv ? gv[i + 1] : gs) + d * k[i + 1];
        const float x2 = in[i + 2] * (gv ? gv[i + 2] : gs) + d * k[i + 2];
        const float x3 = in[i + 3] * (gv ? gv[i + 3] : gs) + d * k[i + 3];
        out[i] = x0, out[i + 1] = x1, out[i + 2] = x2, out[i + 3] = x3;
        s0 += x0 * q[i], s1 += x1 * q[i + 1], s2 += x2 * q[i + 2], s3 += x3 * q[i + 3];
    }
    float so[4] = {s0, s1, s2, s3};
    for (; i < n; i++) {
        const float x = in[i] * (gv ? gv[i] : gs) + d * k[i];
        out[i] = x;
        so[i & 3] += x * q[i];
    }
    *o = (so[0] + so[1]) + (so[2] + so[3]);
}

static void gdn_rows_scalar(float *const *out, const float *const *in, int nr, const float *gv, float gs,
                            const float *k, const float *q, const float *vj, float beta, int64_t n, float *o) {
    for (int r = 0; r < nr; r++) gdn_row_scalar(out[r], in[r], gv, gs, k, q, vj[r], beta, n, &o[r]);
}

#ifdef GR_X86
/* ---- AVX2: one 8-lane chain per row dot, then the scalar tail ---- */
#define T_AVX2 __attribute__((target("avx2,fma")))
T_AVX2 INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T_AVX2 INLINE void gdn_rows_avx2_n(float *const *out_, const float *const *in_, const float *gv, float gs,
                                   const float *k, const float *q, const float *vj, float beta, int64_t n, float *o,
                                   const int NR) {
    const int64_t n8 = n & ~(int64_t)7;
    float *out[GDN_NR];
    const float *in[GDN_NR];
    __m256 acc[GDN_NR], d[GDN_NR];
    float dd[GDN_NR];
    const __m256 g = _mm256_set1_ps(gs);
    for (int r = 0; r < NR; r++) out[r] = out_[r], in[r] = in_[r], acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
        const __m256 kk = _mm256_loadu_ps(k + i), gg = gv ? _mm256_loadu_ps(gv + i) : g;
        for (int r = 0; r < NR; r++) acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(in[r] + i), gg), kk, acc[r]);
    }
    for (int r = 0; r < NR; r++) {
        float sk = hsum256(acc[r]);
        for (int64_t i = n8; i < n; i++) sk += in[r][i] * (gv ? gv[i] : gs) * k[i];
        dd[r] = (vj[r] - sk) * beta;
        d[r] = _mm256_set1_ps(dd[r]);
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < n8; i += 8) {
        const __m256 kk = _mm256_loadu_ps(k + i), qq = _mm256_loadu_ps(q + i), gg = gv ? _mm256_loadu_ps(gv + i) : g;
        for (int r = 0; r < NR; r++) {
            const __m256 x = _mm256_fmadd_ps(d[r], kk, _mm256_mul_ps(_mm256_loadu_ps(in[r] + i), gg));
            _mm256_storeu_ps(out[r] + i, x);
            acc[r] = _mm256_fmadd_ps(x, qq, acc[r]);
        }
    }
    for (int r = 0; r < NR; r++) {
        float so = hsum256(acc[r]);
        for (int64_t i = n8; i < n; i++) {
            const float x = in[r][i] * (gv ? gv[i] : gs) + dd[r] * k[i];
            out[r][i] = x;
            so += x * q[i];
        }
        o[r] = so;
    }
}

T_AVX2 static void gdn_rows_avx2(float *const *out, const float *const *in, int nr, const float *gv, float gs,
                                 const float *k, const float *q, const float *vj, float beta, int64_t n, float *o) {
    switch (nr) {
    case 4: gdn_rows_avx2_n(out, in, gv, gs, k, q, vj, beta, n, o, 4); break;
    case 3: gdn_rows_avx2_n(out, in, gv, gs, k, q, vj, beta, n, o, 3); break;
    case 2: gdn_rows_avx2_n(out, in, gv, gs, k, q, vj, beta, n, o, 2); break;
    default: gdn_rows_avx2_n(out, in, gv, gs, k, q, vj, beta, n, o, 1); break;
    }
}

/* ---- AVX-512: one 16-lane chain per row dot, the last chunk masked (any S_v at full width).
 * NOTE: rows are written only in pass 2 (pass 1 recomputes nothing it stores): a masked store
 * followed by a load of the same bytes cannot be store-forwarded and stalls. */
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
T_512 INLINE __mmask16 tail16(int64_t left) { return left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1); }

T_512 INLINE void gdn_rows_512_n(float *const *out_, const float *const *in_, const float *gv, float gs,
                                 const float *k, const float *q, const float *vj, float beta, int64_t n, float *o,
                                 const int NR) {
    float *out[GDN_NR];
    const float *in[GDN_NR];
    __m512 acc[GDN_NR], d[GDN_NR];
    const __m512 g = _mm512_set1_ps(gs);
    for (int r = 0; r < NR; r++) out[r] = out_[r], in[r] = in_[r], acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        const __m512 kk = _mm512_maskz_loadu_ps(m, k + i), gg = gv ? _mm512_maskz_loadu_ps(m, gv + i) : g;
        for (int r = 0; r < NR; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, in[r] + i), gg), kk, acc[r]);
    }
    for (int r = 0; r < NR; r++) {
        d[r] = _mm512_set1_ps((vj[r] - _mm512_reduce_add_ps(acc[r])) * beta);
        acc[r] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail16(n - i);
        const __m512 kk = _mm512_maskz_loadu_ps(m, k + i), qq = _mm512_maskz_loadu_ps(m, q + i);
        const __m512 gg = gv ? _mm512_maskz_loadu_ps(m, gv + i) : g;
        for (int r = 0; r < NR; r++) {
            const __m512 x = _mm512_fmadd_ps(d[r], kk, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, in[r] + i), gg));
            _mm512_mask_storeu_ps(out[r] + i, m, x);
            acc[r] = _mm512_fmadd_ps(x, qq, acc[r]);
        }
    }
    for (int r = 0; r < NR; r++) o[r] = _mm512_reduce_add_ps(acc[r]);
}

T_512 static void gdn_rows_512(float *const *out, const float *const *in, int nr, const float *gv, float gs,
                               const float *k, const float *q, const float *vj, float beta, int64_t n, float *o) {
    switch (nr) {
    case 4: gdn_rows_512_n(out, in, gv, gs, k, q, vj, beta, n, o, 4); break;
    case 3: gdn_rows_512_n(out, in, gv, gs, k, q, vj, beta, n, o, 3); break;
    case 2: gdn_rows_512_n(out, in, gv, gs, k, q, vj, beta, n, o, 2); break;
    default: gdn_rows_512_n(out, in, gv, gs, k, q, vj, beta, n, o, 1); break;
    }
}
#endif

static gdn_rows_fn gdn_rows_pick(void) {
#ifdef GR_X86
    if (gr_has_avx512) return gdn_rows_512;
    if (gr_has_avx2) return gdn_rows_avx2;
#endif
    return gdn_rows_scalar;
}

/* Tokens are taken GDN_TT at a time: their q, k, v, exp(g), beta are gathered once, then each
 * block of GDN_RB rows runs through all of them while it sits in L1 (a row of token t+1 needs
 * only the same row of token t), so the state is streamed once per chunk, not once per token. */
#define GDN_TT 32
#define GDN_RB 32
/* Token 0 reads the state rows from memory GDN_PF_ROWS rows ahead of use (software prefetch into
 * L2): one layer of the 0.8B shape from cold caches, decode, 1 thread 259 -> 212 us, 2 threads
 * 147 -> 128 us (4 tokens: no change). */
#define GDN_PF_ROWS 32

typedef struct gdn_ctx {
    const gr_op *op;
    int64_t S_v, H_v, H_k, n_tokens, n_seqs, snapshots;
    float scale;
    int per_channel;
    int stream; /* io: snapshot rows go out with non-temporal stores (see stream_row) */
    gdn_rows_fn rows;
    const gr_state_io *io; /* non-NULL: state rows read from / snapshots written to io->cache */
} gdn_ctx;

/* per thread scratch (floats): M [S_v S_v]; the chunk's q, k, v, exp(g), o [GDN_TT S_v] each and
 * beta, scalar exp(g) [GDN_TT] each; the current / next row pointers [S_v] each */
typedef struct gdn_scratch {
    float *M, *q, *k, *v, *g, *o, *beta, *gs;
    float **cur, **next;
} gdn_scratch;

static int64_t gdn_thread_floats(int64_t S_v) {
    const int64_t tok = A16(GDN_TT * S_v);
    return A16(S_v * S_v) + 5 * tok + 2 * A16(GDN_TT) + A16(4 * S_v); /* 2 S_v pointers of <= 8 bytes */
}

static gdn_scratch gdn_scratch_at(float *w, int64_t S_v) {
    const int64_t tok = A16(GDN_TT * S_v);
    gdn_scratch sc;
    sc.M = w;
    sc.q = sc.M + A16(S_v * S_v);
    sc.k = sc.q + tok;
    sc.v = sc.k + tok;
    sc.g = sc.v + tok;
    sc.o = sc.g + tok;
    sc.beta = sc.o + tok;
    sc.gs = sc.beta + A16(GDN_TT);
    sc.cur = (float **)(sc.gs + A16(GDN_TT));
    sc.next = sc.cur + S_v;
    return sc;
}

int64_t gr_w_gated_delta_net(const gr_op *op, int nth) {
    return (int64_t)nth * gdn_thread_floats(op->src[2].ne[0]) * (int64_t)sizeof(float);
}

static int32_t gdn_index(const gr_tensor *ids, int64_t i) {
    int32_t v;
    memcpy(&v, gr_ptr(ids, i, 0, 0, 0), sizeof v);
    return v;
}

/* whether the fused state I/O is exact for these indices (see the top of this section) */
static int gdn_io_direct(const gr_state_io *io, int64_t n_seqs, int64_t snapshots) {
    const int64_t rows = io->cache.ne[1], n_dst = snapshots * n_seqs;
    for (int64_t s = 0; s < n_seqs; s++) {
        const int32_t r = gdn_index(&io->src_ids, s);
        if (r < 0 || r >= rows) return 0;
    }
    for (int64_t a = 0; a < n_dst; a++) {
        const int32_t r = gdn_index(&io->dst_ids, a);
        if (r < 0 || r >= rows) return 0;
        for (int64_t b = 0; b < a; b++)
            if (gdn_index(&io->dst_ids, b) == r) return 0;
        for (int64_t s = 0; s < n_seqs; s++)
            if (s != a % n_seqs && gdn_index(&io->src_ids, s) == r) return 0;
    }
    return 1;
}

/* the fused get_rows: cache row src_ids[s] (NaN where out of range) into src[5]'s seq s */
static void gdn_io_gather(const gr_op *op, const gr_state_io *io, const gr_thread *th) {
    const gr_tensor *state = &op->src[5];
    const int64_t n_seqs = state->ne[3], n = io->cache.ne[0];
    int64_t b, e;
    gr_chunk(n_seqs, th->ith, th->nth, &b, &e);
    for (int64_t s = b; s < e; s++) {
        const int32_t r = gdn_index(&io->src_ids, s);
        float *out = (float *)(state->data + s * state->nb[3]);
        if (r >= 0 && r < io->cache.ne[1]) {
            memcpy(out, gr_row(&io->cache, r, 0, 0), (size_t)n * sizeof(float));
        } else {
            for (int64_t i = 0; i < n; i++) out[i] = NAN;
        }
    }
}

/* the fused set_rows: dst's snapshot rows (slot j of seq s at j n_seqs + s) into their cache
 * rows, in order (an index repeated: the last row wins; out of range: skipped) */
static void gdn_io_scatter(const gr_op *op, const gr_state_io *io, int64_t n_tokens, int64_t n_seqs) {
    const gr_tensor *dst = &op->dst;
    const int64_t n = io->cache.ne[0], n_dst = op->ip[0] * n_seqs;
    const char *first = dst->data + n_tokens * n_seqs * dst->nb[1];
    for (int64_t a = 0; a < n_dst; a++) {
        const int32_t r = gdn_index(&io->dst_ids, a);
        if (r >= 0 && r < io->cache.ne[1])
            memcpy(gr_row(&io->cache, r, 0, 0), first + a * n * (int64_t)sizeof(float), (size_t)n * sizeof(float));
    }
}

/* Row j of the state in snapshot slot `slot` for (h, s): segment seg = (s H_v + h) S_v + j of
 * the slot's flat [S_v n_seqs, S_v H_v] region, i.e. dst row seg / H_v, column (seg % H_v) S_v. */
static char *gdn_slot_row(const gdn_ctx *c, int64_t slot, int64_t h, int64_t s, int64_t j) {
    if (c->io) { /* cache row dst_ids[slot n_seqs + s], segment (h, j) */
        const int32_t r = gdn_index(&c->io->dst_ids, slot * c->n_seqs + s);
        return gr_ptr(&c->io->cache, (h * c->S_v + j) * c->S_v, r, 0, 0);
    }
    const int64_t seg = (s * c->H_v + h) * c->S_v + j;
    const int64_t row = c->n_tokens * c->n_seqs + slot * c->S_v * c->n_seqs + seg / c->H_v;
    return gr_ptr(&c->op->dst, (seg % c->H_v) * c->S_v, row, 0, 0);
}

/* q, k, v, exp(g), beta of tokens [t0, t0 + nt) of (h, s) into the scratch */
static void gdn_gather(const gdn_ctx *c, const gdn_scratch *sc, int64_t h, int64_t s, int64_t t0, int64_t nt) {
    const gr_op *op = c->op;
    const gr_tensor *g = &op->src[3];
    const int64_t S_v = c->S_v, hk = h % c->H_k; /* v head h reads q/k head h % H_k (tiled) */
    for (int64_t i = 0; i < nt; i++) {
        const int64_t t = t0 + i;
        gather_f32(sc->q + i * S_v, gr_row(&op->src[0], hk, t, s), op->src[0].nb[0], S_v);
        gather_f32(sc->k + i * S_v, gr_row(&op->src[1], hk, t, s), op->src[1].nb[0], S_v);
        gather_f32(sc->v + i * S_v, gr_row(&op->src[2], h, t, s), op->src[2].nb[0], S_v);
        const char *gp = gr_row(g, h, t, s);
        if (c->per_channel) { /* per channel: the k index i */
            for (int64_t j = 0; j < S_v; j++) sc->g[i * S_v + j] = expf(*(const float *)(gp + j * g->nb[0]));
        } else {
            sc->gs[i] = expf(*(const float *)gp);
        }
        sc->beta[i] = *(const float *)gr_row(&op->src[4], h, t, s);
    }
}

/* A snapshot row from M into the cache, past the caches where it can: non-temporal stores
 * when the op writes at least GDN_STREAM_BYTES of snapshots (nothing reads the rows before the
 * next graph run, by when a model that large has streamed its weights through every cache; a
 * plain store would first read the line it overwrites). Model state rows are 64-byte aligned
 * (models/memory/base.py state_leaf); others take plain stores. Measured, 0.8B shape, one layer
 * from cold caches, 1 thread: decode 439 us unfused -> 331 fused with plain stores -> 271
 * streamed; a verify of 3 drafts 1100 -> 736 -> 493. Below the bar (the shipped tiny model, 20 KB
 * a layer, all in cache) streaming made decode 4% slower: the next token read its state from
 * memory. */
#define GDN_STREAM_BYTES (256 << 10)
#ifdef GR_X86
T_512 static void stream_row_512(float *p, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) _mm512_stream_ps(p + i, _mm512_loadu_ps(x + i));
}
T_AVX2 static void stream_row_avx2(float *p, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) _mm256_stream_ps(p + i, _mm256_loadu_ps(x + i));
}
#endif

static void stream_row(float *p, const float *x, int64_t n) {
#ifdef GR_X86
    if (gr_has_avx512 && ((uintptr_t)p & 63) == 0 && (n & 15) == 0) {
        stream_row_512(p, x, n);
        return;
    }
    if (gr_has_avx2 && ((uintptr_t)p & 31) == 0 && (n & 7) == 0) {
        stream_row_avx2(p, x, n);
        return;
    }
#endif
    memcpy(p, x, (size_t)n * sizeof(float));
}

/* streamed stores become visible in order with the barrier that ends the op */
static void stream_fence(void) {
#ifdef GR_X86
    _mm_sfence();
#endif
}

/* rows [j0, j0 + nj) through tokens [t0, t0 + nt): each token reads the rows at cur[] and
 * writes them to its snapshot slot (when it owes one) or to M */
static void gdn_rows_chunk(const gdn_ctx *c, const gdn_scratch *sc, int64_t h, int64_t s, int64_t j0, int64_t nj,
                           int64_t t0, int64_t nt) {
    const gr_tensor *dst = &c->op->dst;
    const int64_t S_v = c->S_v;
    for (int64_t i = 0; i < nt; i++) {
        const int64_t slot = c->n_tokens - 1 - (t0 + i);
        const int snap = slot < c->snapshots, direct = snap && !c->io && dst->nb[0] == sizeof(float);
        for (int64_t j = j0; j < j0 + nj; j++) sc->next[j] = direct ? (float *)gdn_slot_row(c, slot, h, s, j) : sc->M + j * S_v;

        const float *gv = c->per_channel ? sc->g + i * S_v : NULL;
        const int first = t0 + i == 0; /* reads the state input: from memory, rows the prefetcher misses */
        for (int64_t j = j0; j < j0 + nj; j += GDN_NR) {
            const int nr = (int)(j0 + nj - j < GDN_NR ? j0 + nj - j : GDN_NR);
            for (int64_t r = j + GDN_PF_ROWS; first && r < j + GDN_PF_ROWS + nr && r < S_v; r++)
                for (int64_t x = 0; x < S_v; x += 16) __builtin_prefetch(sc->cur[r] + x, 0, 1);
            c->rows(sc->next + j, (const float *const *)sc->cur + j, nr, gv, sc->gs[i], sc->k + i * S_v,
                    sc->q + i * S_v, sc->v + i * S_v + j, sc->beta[i], S_v, sc->o + i * S_v + j);
        }
        for (int64_t j = j0; j < j0 + nj; j++) {
            if (snap && c->io) {
                float *p = (float *)gdn_slot_row(c, slot, h, s, j);
                if (c->stream) {
                    stream_row(p, sc->next[j], S_v);
                } else {
                    memcpy(p, sc->next[j], (size_t)S_v * sizeof(float));
                }
            } else if (snap && !direct) { /* a strided dst: copy the snapshot rows out */
                char *p = gdn_slot_row(c, slot, h, s, j);
                for (int64_t x = 0; x < S_v; x++) *(float *)(p + x * dst->nb[0]) = sc->next[j][x];
            }
            sc->cur[j] = sc->next[j]; /* the next token reads what this one wrote */
        }
    }
}

/* all tokens of (h, s) */
static void gdn_unit(const gdn_ctx *c, const gdn_scratch *sc, int64_t h, int64_t s) {
    const gr_tensor *state = &c->op->src[5], *dst = &c->op->dst;
    const int64_t S_v = c->S_v;
    const float *cached = c->io ? (const float *)gr_row(&c->io->cache, gdn_index(&c->io->src_ids, s), 0, 0) : NULL;
    for (int64_t j = 0; j < S_v; j++) {
        if (cached) {
            sc->cur[j] = (float *)cached + (h * S_v + j) * S_v; /* overwritten (if at all) after it is read */
        } else if (state->nb[0] == sizeof(float)) {
            sc->cur[j] = (float *)gr_row(state, j, h, s); /* read in place, never written */
        } else {
            gather_f32(sc->M + j * S_v, gr_row(state, j, h, s), state->nb[0], S_v);
            sc->cur[j] = sc->M + j * S_v;
        }
    }
    for (int64_t t0 = 0; t0 < c->n_tokens; t0 += GDN_TT) {
        const int64_t nt = c->n_tokens - t0 < GDN_TT ? c->n_tokens - t0 : GDN_TT;
        gdn_gather(c, sc, h, s, t0, nt);
        for (int64_t j0 = 0; j0 < S_v; j0 += GDN_RB)
            gdn_rows_chunk(c, sc, h, s, j0, S_v - j0 < GDN_RB ? S_v - j0 : GDN_RB, t0, nt);
        for (int64_t i = 0; i < nt; i++) { /* o of each token: S_v values of its dst row */
            char *p = gr_ptr(dst, h * S_v, s * c->n_tokens + t0 + i, 0, 0);
            for (int64_t j = 0; j < S_v; j++) *(float *)(p + j * dst->nb[0]) = sc->o[i * S_v + j] * c->scale;
        }
    }
}

void gr_k_gated_delta_net(const gr_op *op, const gr_thread *th) {
    const gr_tensor *v = &op->src[2];
    gdn_ctx c = {
        .op = op, .S_v = v->ne[0], .H_v = v->ne[1], .H_k = op->src[1].ne[1], .n_tokens = v->ne[2],
        .n_seqs = v->ne[3], .snapshots = op->ip[0], .scale = 1.0f / sqrtf((float)v->ne[0]),
        .per_channel = op->src[3].ne[0] != 1, .rows = gdn_rows_pick(),
    };
    const gdn_scratch sc = gdn_scratch_at((float *)op->wdata + (int64_t)th->ith * gdn_thread_floats(c.S_v), c.S_v);
    const gr_state_io *io = op->ip[1] ? (const gr_state_io *)op->aux : NULL;
    const int direct = io && gdn_io_direct(io, c.n_seqs, c.snapshots); /* the same answer in every thread */
    if (io && !direct) {
        gdn_io_gather(op, io, th);
        gr_barrier(th);
    }
    c.io = direct ? io : NULL;
    c.stream = c.snapshots * c.n_seqs * c.S_v * c.S_v * c.H_v * (int64_t)sizeof(float) >= GDN_STREAM_BYTES;
    int64_t b, e;
    gr_chunk(c.H_v * c.n_seqs, th->ith, th->nth, &b, &e);
    for (int64_t u = b; u < e; u++) gdn_unit(&c, &sc, u % c.H_v, u / c.H_v);
    if (direct && c.stream) stream_fence();
    if (io && !direct) {
        gr_barrier(th);
        if (th->ith == 0) gdn_io_scatter(op, io, c.n_tokens, c.n_seqs);
    }
}
