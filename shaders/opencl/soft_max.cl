// soft_max_ext over dim 0 of a*scale + slope[i2]*mask: one work-group of WG items per row.
// -DHAS_MASK with -DTM (mask type F32/F16); slopes are the per-head ALiBi slopes (host-computed).
#include "common.h"

__kernel void soft_max(TENSOR(a), TENSOR(m), __global const float *slopes, TENSOR(d), float scale) {
    int r = get_group_id(0), l = get_local_id(0);
    int i1 = r % a_ne.s1, i2 = (r / a_ne.s1) % a_ne.s2, i3 = r / (a_ne.s1 * a_ne.s2);
    __local double tmp[WG];
    __local float tmpf[WG];
    float mx = -INFINITY;
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        float w = LD_F32(AT(a, i0, i1, i2, i3)) * scale;
#ifdef HAS_MASK
        w += slopes[i2] * LD(TM, AT(m, i0, i1, i2 % m_ne.s2, i3 % m_ne.s3));
#endif
        ST_F32(AT(d, i0, i1, i2, i3), w);
        mx = fmax(mx, w);
    }
    // NOTE: each item rereads only the elements it wrote itself, so d may alias a
    mx = wg_max(mx, tmpf);
    double acc = 0.0;
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        __global char *p = AT(d, i0, i1, i2, i3);
        float e = exp(LD_F32(p) - mx);
        ST_F32(p, e);
        acc += (double)e;
    }
    float inv = (float)(1.0 / wg_sum(acc, tmp));
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        __global char *p = AT(d, i0, i1, i2, i3);
        ST_F32(p, LD_F32(p) * inv);
    }
}
