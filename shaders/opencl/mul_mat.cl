// mul_mat: d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3], and
// mul_mat_id: d[m, e, t] = sum_k as[k, m, ids[e, t]] * b[k, e % b.ne1, t].
// One work-group of WG items (-DITEM_ROWS: one work-item) per row of d and block of NT tokens (-DNT,
// default 1): a's row is read once for the NT tokens, float accumulation; mul_mat of more tokens than
// MM_VEC_MAX_N with contiguous rows goes to mul_mat_tiled.cl.
// -DTA=F32|F16|BF16 or -DDEQ=deq16_q8_0|deq16_q4_0|deq16_q4_k|deq16_q5_k|deq16_q6_k (common.h);
// -DTB=F32|F16; -DA_CONTIG (F32/F16 a, K a multiple of 16), -DB_CONTIG: rows contiguous (nb0 = the
// element size), read with vector loads.
#include "common.h"
#include "mul_mat.h"

#ifndef NT
#define NT 1
#endif

// EACH_T(X): X(0) .. X(NT - 1), written out (PoCL keeps per-token arrays in memory, not registers)
#if NT > 8
#error "mul_mat.cl: NT is at most 8"
#endif
#define EACH_T(X) X(0) EACH_T1(X)
#if NT > 1
#define EACH_T1(X) X(1) EACH_T2(X)
#else
#define EACH_T1(X)
#endif
#if NT > 2
#define EACH_T2(X) X(2) EACH_T3(X)
#else
#define EACH_T2(X)
#endif
#if NT > 3
#define EACH_T3(X) X(3) EACH_T4(X)
#else
#define EACH_T3(X)
#endif
#if NT > 4
#define EACH_T4(X) X(4) EACH_T5(X)
#else
#define EACH_T4(X)
#endif
#if NT > 5
#define EACH_T5(X) X(5) EACH_T6(X)
#else
#define EACH_T5(X)
#endif
#if NT > 6
#define EACH_T6(X) X(6) EACH_T7(X)
#else
#define EACH_T6(X)
#endif
#if NT > 7
#define EACH_T7(X) X(7)
#else
#define EACH_T7(X)
#endif

#ifdef B_CONTIG
#define B16(bt, u) LD16(TB, bt, u)
#else
inline float16 b16_strided(__global const char *bt, ulong b_nb0, int u) {
    float x_[16];
    for (int i = 0; i < 16; i++) x_[i] = LD(TB, bt + (ulong)(16 * u + i) * b_nb0);
    return vload16(0, x_);
}
#define B16(bt, u) b16_strided(bt, b_nb0, u)
#endif

// partial dot products of row arow of a (stride a_nb0) with the rows brow + t * b_nb1 (t < nt, stride
// b_nb0) of b, over the units (or elements) l, l + step, ...: part[t]. Each token's sum runs in the same
// order whatever NT and nt: a verify batch is bit-identical to single-token decodes.
inline void rows_dot(__global const char *arow, ulong a_nb0, __global const char *brow, ulong b_nb0,
                     ulong b_nb1, int nt, int K, int l, int step, float *part) {
#ifdef A16
#define DECL(t) float16 acc16_##t = 0.0f;
    EACH_T(DECL)
#undef DECL
    for (int u = l; u < K / 16; u += step) {  // 16-element units of a's row, each read once for the NT tokens
        float16 w = A16(arow, u);
#define STEP(t) if (t < nt) acc16_##t += w * B16(brow + (ulong)t * b_nb1, u);
        EACH_T(STEP)
#undef STEP
    }
#define FOLD(t) { float8 a8 = acc16_##t.lo + acc16_##t.hi; float4 a4 = a8.lo + a8.hi; \
                  part[t] = (a4.x + a4.y) + (a4.z + a4.w); }
    EACH_T(FOLD)
#undef FOLD
#else
#define DECL(t) float acc_##t = 0.0f;
    EACH_T(DECL)
#undef DECL
    for (int k = l; k < K; k += step) {
        float w = LD(TA, arow + (ulong)k * a_nb0);
#define STEP(t) if (t < nt) acc_##t += w * LD(TB, brow + (ulong)t * b_nb1 + (ulong)k * b_nb0);
        EACH_T(STEP)
#undef STEP
    }
#define STORE(t) part[t] = acc_##t;
    EACH_T(STORE)
#undef STORE
#endif
}

#ifdef ITEM_ROWS
// CPU devices: one work-item per row of d and block of tokens, the whole row in order, no local
// memory or barriers (PoCL runs a work-group's barriers as loops over its items: 5-10x slower here)
#define GROUP_INDEX() get_global_id(0)
#define DOT(arow, a_nb0, brow, b_nb0, b_nb1, nt, K, part) rows_dot(arow, a_nb0, brow, b_nb0, b_nb1, nt, K, 0, 1, part)
#define RESULT(t, part) part[t]
#define WRITER(t) 1
#else
#define GROUP_INDEX() get_group_id(0)
// the WG items' partial sums meet in a tree over tmp; token t's result in tmp[t * WG]
#define DOT(arow, a_nb0, brow, b_nb0, b_nb1, nt, K, part) \
    __local float tmp[NT * WG]; \
    rows_dot(arow, a_nb0, brow, b_nb0, b_nb1, nt, K, get_local_id(0), WG, part); \
    reduce_wg(tmp, part)
#define RESULT(t, part) tmp[(t) * WG]
#define WRITER(t) (get_local_id(0) == (t))

inline void reduce_wg(__local float *tmp, const float *part) {
    int l = get_local_id(0);
#define PUT(t) tmp[t * WG + l] = part[t];
    EACH_T(PUT)
#undef PUT
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) {
#define SUM(t) tmp[t * WG + l] += tmp[t * WG + l + s];
            EACH_T(SUM)
#undef SUM
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}
#endif

// one work-group (ITEM_ROWS: one work-item) per row m of d and block of NT consecutive tokens n
__kernel void mul_mat(TENSOR(a), TENSOR(b), TENSOR(d)) {
    int n_nb = (d_ne.s1 + NT - 1) / NT;
    int o = GROUP_INDEX();
    if (o >= d_ne.s0 * n_nb * d_ne.s2 * d_ne.s3) return;
    int m = o % d_ne.s0, n0 = ((o / d_ne.s0) % n_nb) * NT;
    int i2 = (o / (d_ne.s0 * n_nb)) % d_ne.s2, i3 = o / (d_ne.s0 * n_nb * d_ne.s2);
    int a2 = i2 / (b_ne.s2 / a_ne.s2), a3 = i3 / (b_ne.s3 / a_ne.s3);
    int nt = min(NT, d_ne.s1 - n0);
    float part[NT];
    DOT(AT(a, 0, m, a2, a3), a_nb.s0, AT(b, 0, n0, i2, i3), b_nb.s0, b_nb.s1, nt, a_ne.s0, part);
#define OUT(t) if (t < nt && WRITER(t)) ST_F32(AT(d, m, n0 + t, i2, i3), RESULT(t, part));
    EACH_T(OUT)
#undef OUT
}

__kernel void mul_mat_id(TENSOR(a), TENSOR(b), TENSOR(ids), TENSOR(d)) {
    int o = GROUP_INDEX();
    if (o >= d_ne.s0 * d_ne.s1 * d_ne.s2) return;
    int m = o % d_ne.s0, e = (o / d_ne.s0) % d_ne.s1, t = o / (d_ne.s0 * d_ne.s1);
    int ex = *(__global const int *)AT(ids, e, t, 0, 0);
    if (ex < 0 || ex >= a_ne.s2) return;  // the cpu reference raises; leave the row unwritten
    float part[NT];
    DOT(AT(a, 0, m, ex, 0), a_nb.s0, AT(b, 0, e % b_ne.s1, t, 0), b_nb.s0, 0, 1, a_ne.s0, part);
    if (WRITER(0)) ST_F32(AT(d, m, e, t, 0), RESULT(0, part));
}
