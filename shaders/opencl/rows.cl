// sum_rows (-DOP_SUM), mean (-DOP_MEAN) and argmax (-DOP_ARGMAX) over dim 0 of an F32
// tensor: one work-group of WG items per row. Sums in double, rounded to float once (ggml_float).
#include "common.h"

__kernel void rows(TENSOR(a), TENSOR(d)) {
    int r = get_group_id(0), l = get_local_id(0);
    int i1 = r % a_ne.s1, i2 = (r / a_ne.s1) % a_ne.s2, i3 = r / (a_ne.s1 * a_ne.s2);
#ifdef OP_ARGMAX
    // the first index of the largest value: each item keeps its first max, then the
    // reduction prefers the larger value, and the lower index among equal ones
    __local float val[WG];
    __local int arg[WG];
    float best = -INFINITY;
    int bi = a_ne.s0;
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) {
        float x = LD_F32(AT(a, i0, i1, i2, i3));
        if (bi == a_ne.s0 || x > best) { best = x; bi = i0; }
    }
    val[l] = best;
    arg[l] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s && arg[l + s] < a_ne.s0 &&
            (arg[l] == a_ne.s0 || val[l + s] > val[l] || (val[l + s] == val[l] && arg[l + s] < arg[l]))) {
            val[l] = val[l + s];
            arg[l] = arg[l + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0) *(__global int *)AT(d, i1, i2, i3, 0) = arg[0];
#else
    __local double tmp[WG];
    double acc = 0.0;
    for (int i0 = l; i0 < a_ne.s0; i0 += WG) acc += (double)LD_F32(AT(a, i0, i1, i2, i3));
    float sum = (float)wg_sum(acc, tmp);
#ifdef OP_MEAN
    sum = sum / (float)a_ne.s0;
#endif
    if (l == 0) ST_F32(AT(d, 0, i1, i2, i3), sum);
#endif
}
