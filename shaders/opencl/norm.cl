// rms_norm (-DOP_RMS) and l2_norm (-DOP_L2) over dim 0: one work-group of WG items per row.
// Squares in float, summed in double and rounded to float once, as ggml-cpu.
#include "common.h"

__kernel void norm(TENSOR(a), TENSOR(d), float eps) {
    int r = get_group_id(0), l = get_local_id(0);
    int i1 = r % a_ne.s1, i2 = (r / a_ne.s1) % a_ne.s2, i3 = r / (a_ne.s1 * a_ne.s2);
    __local double tmp[WG];
    double acc = 0.0;
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        float x = LD_F32(AT(a, i0, i1, i2, i3));
        acc += (double)(x * x);
    }
    double sum = wg_sum(acc, tmp);
#ifdef OP_RMS
    float ms = (float)(sum / a_ne.s0);
    float scale = 1.0f / sqrt(ms + eps);
#else
    float scale = 1.0f / fmax(sqrt((float)sum), eps);
#endif
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        float x = LD_F32(AT(a, i0, i1, i2, i3));
        ST_F32(AT(d, i0, i1, i2, i3), x * scale);
    }
}
