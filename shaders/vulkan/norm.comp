// rms_norm (-DOP_RMS) and l2_norm (-DOP_L2) over dim 0 of an F32 tensor: one work-group of WG
// invocations per row; squares summed in float by a tree over the work-group.
#version 450
#define N_TENSORS 2
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, d, );
layout(push_constant) uniform Push {
    float eps;
} pc;

void main() {
    uint row = group_index(), l = gl_LocalInvocationID.x;
    if (row >= NROWS(a)) return;  // uniform per work-group: no barrier is skipped by part of it
    uvec3 r = row_index(row, NE(a));
    float acc = 0.0;
    for (uint i0 = l; i0 < NE(a).x; i0 += WG) {
        float x = LD_F32(a, AT(a, i0, r.x, r.y, r.z));
        acc += x * x;
    }
    float sum = wg_sum(acc);
#ifdef OP_RMS
    float scale = 1.0 / sqrt(sum / float(NE(a).x) + pc.eps);
#else
    float scale = 1.0 / max(sqrt(sum), pc.eps);
#endif
    for (uint i0 = l; i0 < NE(a).x; i0 += WG) {
        float x = LD_F32(a, AT(a, i0, r.x, r.y, r.z));
        ST_F32(d, AT(d, i0, r.x, r.y, r.z), x * scale);
    }
}
