// ssm_conv: d[ch, t, s] = sum_k sx[t + k, ch, s] * c[k, ch], a sequential float sum over the
// window (as ggml-cpu); one invocation per output element.
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, sx, readonly);
TENSOR(2, c, readonly);
TENSOR(3, d, );

void main() {
    uint idx = group_index() * WG + gl_LocalInvocationID.x;
    if (idx >= NELEM(d)) return;
    uvec4 i = unravel(idx, NE(d));  // (ch, t, s, 0)
    float acc = 0.0;
    for (uint k = 0; k < NE(c).x; k++) acc += LD_F32(sx, AT(sx, i.y + k, i.x, i.z, 0u)) * LD_F32(c, AT(c, k, i.x, 0u, 0u));
    ST_F32(d, AT(d, i.x, i.y, i.z, i.w), acc);
}
