// soft_max_ext over dim 0 of a*scale + slope[i2]*mask: one work-group of WG invocations per
// row. -DHAS_MASK with -DTM (F32|F16; without a mask, binding m is a and unused); the ALiBi
// slopes per head (graphir/numerics.py) are the meta buffer's extra floats.
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, m, readonly);
TENSOR(3, d, );
layout(push_constant) uniform Push {
    float scale;
} pc;

void main() {
    uint row = group_index(), l = gl_LocalInvocationID.x;
    if (row >= NROWS(a)) return;
    uvec3 r = row_index(row, NE(a));
    float mx = uintBitsToFloat(0xFF800000u);  // -inf
    for (uint i0 = l; i0 < NE(a).x; i0 += WG) {
        float w = LD_F32(a, AT(a, i0, r.x, r.y, r.z)) * pc.scale;
#ifdef HAS_MASK
        w += extra[r.y] * LD(TM, m, AT(m, i0, r.x, r.y % NE(m).z, r.z % NE(m).w));
#endif
        ST_F32(d, AT(d, i0, r.x, r.y, r.z), w);
        mx = max(mx, w);
    }
    // NOTE: each invocation rereads only the elements it wrote itself, so d may alias a
    mx = wg_max(mx);
    float acc = 0.0;
    for (uint i0 = l; i0 < NE(a).x; i0 += WG) {
        uint p = AT(d, i0, r.x, r.y, r.z);
        float e = exp(LD_F32(d, p) - mx);
        ST_F32(d, p, e);
        acc += e;
    }
    float inv = 1.0 / wg_sum(acc);
    for (uint i0 = l; i0 < NE(a).x; i0 += WG) {
        uint p = AT(d, i0, r.x, r.y, r.z);
        ST_F32(d, p, LD_F32(d, p) * inv);
    }
}
