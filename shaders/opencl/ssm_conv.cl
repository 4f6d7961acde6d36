// ssm_conv: d[ch, t, s] = sum_k sx[t + k, ch, s] * c[k, ch], a sequential float sum over the
// window (as ggml-cpu); one work-item per output element.
#include "common.h"

__kernel void ssm_conv(TENSOR(sx), TENSOR(c), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, ch, t, s, i3);
    float acc = 0.0f;
    for (int k = 0; k < c_ne.s0; k++) acc += LD_F32(AT(sx, t + k, ch, s, 0)) * LD_F32(AT(c, k, ch, 0, 0));
    ST_F32(AT(d, ch, t, s, i3), acc);
}
