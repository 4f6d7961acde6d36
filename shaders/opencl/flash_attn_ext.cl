// flash_attn_ext: d[:, h, iq, s] = softmax(scale * q k^T (softcapped) + slope * mask) v for one
// query row per work-group of WG items. Pass 1 finds the row max; pass 2 walks the kv cells in
// chunks of WG: each item scores one cell into local memory, then each item accumulates its
// DV_PER output channels over the chunk. -inf mask entries weigh exactly 0 and their K and V are
// never read (a decode's padded cache is mostly free cells); a fully masked row gives zeros (ggml's
// S == 0 rule). -DTK, -DTV (F32/F16), -DHAS_MASK with -DTM, -DSOFTCAP;
// -DQK_VEC4 when the q and k rows are contiguous and the head size is a multiple of 4; -DITEM_ROWS (CPU
// devices): one work-item per query row, DV_PER = the head size.
#include "common.h"

#define LD4_F32(p, i) vload4((i), (__global const float *)(p))
#define LD4_F16(p, i) vload_half4((i), (__global const half *)(p))
#define LD4_(T, p, i) LD4_##T(p, i)
#define LD4(T, p, i) LD4_(T, p, i)

inline float score(__global char *q_d, ulong q_o, int4 q_ne, ulong4 q_nb, __global char *k_d, ulong k_o,
                   int4 k_ne, ulong4 k_nb, __global char *m_d, ulong m_o, int4 m_ne, ulong4 m_nb,
                   int j, int iq, int h, int s, int hk, int sk, float scale, float softcap, float slope) {
#ifdef HAS_MASK
    // a -inf mask entry: the cell weighs exactly 0, its K (and V) never read (free cells of a padded cache)
    float mv = slope * LD(TM, AT(m, j, iq, h % m_ne.s2, s % m_ne.s3));
    if (mv == -INFINITY) return -INFINITY;
#endif
    __global const char *qr = AT(q, 0, iq, h, s), *kr = AT(k, 0, j, hk, sk);
#ifdef QK_VEC4  // contiguous q and k rows, head size a multiple of 4
    float4 dot4 = 0.0f;
    for (int i = 0; i < q_ne.s0 / 4; i++) dot4 += LD4_F32(qr, i) * LD4(TK, kr, i);
    float dot = (dot4.x + dot4.y) + (dot4.z + dot4.w);
#else
    float dot = 0.0f;
    for (int i = 0; i < q_ne.s0; i++) dot += LD_F32(qr + i * q_nb.s0) * LD(TK, kr + i * k_nb.s0);
#endif
    float x = dot * scale;
#ifdef SOFTCAP
    x = softcap * tanh(x);
#endif
#ifdef HAS_MASK
    x += mv;
#endif
    return x;
}

__kernel void flash_attn_ext(TENSOR(q), TENSOR(k), TENSOR(v), TENSOR(m), __global const float *slopes,
                             TENSOR(d), float scale, float softcap) {
#ifdef ITEM_ROWS
    // CPU devices: one work-item per query row and head, the same two passes over the cells in order
    // (row max, then weights and V accumulated cell by cell) without local memory or barriers
    int grp = get_global_id(0);
    int n_q = q_ne.s1, H = q_ne.s2, n_kv = k_ne.s1, Dv = v_ne.s0;
    if (grp >= n_q * H * q_ne.s3) return;
    int iq = grp % n_q, h = (grp / n_q) % H, s = grp / (n_q * H);
    int hk = h / (H / k_ne.s2), sk = s / (q_ne.s3 / k_ne.s3);
    float slope = slopes[h];
    float mx = -INFINITY;
    for (int j = 0; j < n_kv; j++)
        mx = fmax(mx, score(q_d, q_o, q_ne, q_nb, k_d, k_o, k_ne, k_nb, m_d, m_o, m_ne, m_nb,
                            j, iq, h, s, hk, sk, scale, softcap, slope));
    float off = mx == -INFINITY ? 0.0f : mx;
    float acc[DV_PER];
    for (int dv = 0; dv < DV_PER; dv++) acc[dv] = 0.0f;
    double total = 0.0;
    for (int j = 0; j < n_kv; j++) {
        float e = exp(score(q_d, q_o, q_ne, q_nb, k_d, k_o, k_ne, k_nb, m_d, m_o, m_ne, m_nb,
                            j, iq, h, s, hk, sk, scale, softcap, slope) - off);
        if (e == 0.0f) continue;  // masked (never read) or underflowed: weighs exactly 0
        total += (double)e;
        __global const char *vc = AT(v, 0, j, hk, sk);
        for (int dv = 0; dv < Dv; dv++) acc[dv] += e * LD(TV, vc + dv * v_nb.s0);
    }
    float sum = (float)total;
    for (int dv = 0; dv < Dv; dv++) ST_F32(AT(d, dv, h, iq, s), sum == 0.0f ? 0.0f : acc[dv] / sum);
#else
    int grp = get_group_id(0), l = get_local_id(0);
    int n_q = q_ne.s1, H = q_ne.s2, n_kv = k_ne.s1, Dv = v_ne.s0;
    int iq = grp % n_q, h = (grp / n_q) % H, s = grp / (n_q * H);
    int hk = h / (H / k_ne.s2), sk = s / (q_ne.s3 / k_ne.s3);
    float slope = slopes[h];
    __local float tmpf[WG];
    __local double tmp[WG];
    __local float w[WG];

    float mx = -INFINITY;
    for (int j = l; j < n_kv; j += WG)
        mx = fmax(mx, score(q_d, q_o, q_ne, q_nb, k_d, k_o, k_ne, k_nb, m_d, m_o, m_ne, m_nb,
                            j, iq, h, s, hk, sk, scale, softcap, slope));
    mx = wg_max(mx, tmpf);
    float off = mx == -INFINITY ? 0.0f : mx;

    float acc[DV_PER];
    for (int t = 0; t < DV_PER; t++) acc[t] = 0.0f;
    double total = 0.0;
    for (int c0 = 0; c0 < n_kv; c0 += WG) {
        int j = c0 + l;
        float e = 0.0f;
        if (j < n_kv)
            e = exp(score(q_d, q_o, q_ne, q_nb, k_d, k_o, k_ne, k_nb, m_d, m_o, m_ne, m_nb,
                          j, iq, h, s, hk, sk, scale, softcap, slope) - off);
        w[l] = e;
        total += (double)e;
        barrier(CLK_LOCAL_MEM_FENCE);
        int n = min(WG, n_kv - c0);
        for (int t = 0; t < DV_PER; t++) {
            int dv = l + t * WG;
            if (dv < Dv) {
                __global const char *vc = AT(v, dv, c0, hk, sk);
                for (int jj = 0; jj < n; jj++)
                    if (w[jj] != 0.0f) acc[t] += w[jj] * LD(TV, vc + jj * v_nb.s1);  // (uniform branch)
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float sum = (float)wg_sum(total, tmp);
    for (int t = 0; t < DV_PER; t++) {
        int dv = l + t * WG;
        if (dv < Dv) ST_F32(AT(d, dv, h, iq, s), sum == 0.0f ? 0.0f : acc[t] / sum);
    }
#endif
}
