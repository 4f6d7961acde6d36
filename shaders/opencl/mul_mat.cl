// mul_mat: d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3], and
// mul_mat_id: d[m, e, t] = sum_k as[k, m, ids[e, t]] * b[k, e % b.ne1, t].
// One work-group of WG items per output element (a row-pair dot product), float accumulation;
// mul_mat of several tokens with contiguous rows goes to mul_mat_tiled.cl.
// -DTA=F32|F16|BF16 or -DDEQ=deq16_q8_0|deq16_q4_0|deq16_q4_k|deq16_q5_k|deq16_q6_k (common.h);
// -DTB=F32|F16; -DA_CONTIG (F32/F16 a, K a multiple of 16), -DB_CONTIG: rows contiguous (nb0 = the
// element size), read with vector loads.
#include "common.h"
#include "mul_mat.h"

// the WG-item dot product of row arow of a (stride a_nb0) and row brow of b (stride b_nb0)
inline float row_dot(__global const char *arow, ulong a_nb0, __global const char *brow, ulong b_nb0, int K,
                     __local float *tmp) {
    int l = get_local_id(0);
    float acc = 0.0f;
#ifdef A16
    float16 acc16 = 0.0f;
    for (int u = l; u < K / 16; u += WG) {  // 16-element units of a's row
#ifdef B_CONTIG
        float16 x = LD16(TB, brow, u);
#else
        float x_[16];
        for (int i = 0; i < 16; i++) x_[i] = LD(TB, brow + (ulong)(16 * u + i) * b_nb0);
        float16 x = vload16(0, x_);
#endif
        acc16 += A16(arow, u) * x;
    }
    float8 a8 = acc16.lo + acc16.hi;
    float4 a4 = a8.lo + a8.hi;
    acc = (a4.x + a4.y) + (a4.z + a4.w);
#else
    for (int k = l; k < K; k += WG) acc += LD(TA, arow + (ulong)k * a_nb0) * LD(TB, brow + (ulong)k * b_nb0);
#endif
    tmp[l] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) tmp[l] += tmp[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return tmp[0];
}

__kernel void mul_mat(TENSOR(a), TENSOR(b), TENSOR(d)) {
    int o = get_group_id(0);
    int m = o % d_ne.s0, n = (o / d_ne.s0) % d_ne.s1;
    int i2 = (o / (d_ne.s0 * d_ne.s1)) % d_ne.s2, i3 = o / (d_ne.s0 * d_ne.s1 * d_ne.s2);
    int a2 = i2 / (b_ne.s2 / a_ne.s2), a3 = i3 / (b_ne.s3 / a_ne.s3);
    __local float tmp[WG];
    float r = row_dot(AT(a, 0, m, a2, a3), a_nb.s0, AT(b, 0, n, i2, i3), b_nb.s0, a_ne.s0, tmp);
    if (get_local_id(0) == 0) ST_F32(AT(d, m, n, i2, i3), r);
}

__kernel void mul_mat_id(TENSOR(a), TENSOR(b), TENSOR(ids), TENSOR(d)) {
    int o = get_group_id(0);
    int m = o % d_ne.s0, e = (o / d_ne.s0) % d_ne.s1, t = o / (d_ne.s0 * d_ne.s1);
    int ex = *(__global const int *)AT(ids, e, t, 0, 0);
    if (ex < 0 || ex >= a_ne.s2) return;  // the cpu reference raises; leave the row unwritten
    __local float tmp[WG];
    float r = row_dot(AT(a, 0, m, ex, 0), a_nb.s0, AT(b, 0, e % b_ne.s1, t, 0), b_nb.s0, a_ne.s0, tmp);
    if (get_local_id(0) == 0) ST_F32(AT(d, m, e, t, 0), r);
}
