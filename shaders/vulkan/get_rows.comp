// get_rows: d[i0, i, i2, i3] = a[i0, b[i, i2, i3], i2, i3], one work-group per output row
// (the row index is the same for the whole group, so `a` may be windowed, weights.glsl).
// -DTA=F32|F16|BF16 (float result) or -DRAW32 (I32 copy): an invocation per element;
// -DDEQ=<block type id> (weights.glsl): an invocation per 16 elements of a block row.
#version 450
#define N_TENSORS 3
#include "common.glsl"
#include "weights.glsl"
layout(local_size_x = WG) in;
TENSOR(2, b, readonly);
TENSOR(3, d, );

void main() {
    uint row = group_index(), l = gl_LocalInvocationID.x;
    if (row >= NROWS(d)) return;
    uvec3 r = row_index(row, NE(d));
    uint src = U32(b, AT(b, r.x, r.y, r.z, 0u));
    uint base = A_WINDOW(OFF(a) + src * NB(a).y + r.y * NB(a).z + r.z * NB(a).w);
#if defined(DEQ)
    for (uint u = l; u < NE(d).x / 16u; u += WG) {
        float x[16];
        deq16(base, u, x);
        [[unroll]] for (uint j = 0; j < 16u; j++) ST_F32(d, AT(d, 16u * u + j, r.x, r.y, r.z), x[j]);
    }
#else
    for (uint i0 = l; i0 < NE(d).x; i0 += WG) {
        uint ab = base + i0 * NB(a).x;
#if defined(RAW32)
        U32(d, AT(d, i0, r.x, r.y, r.z)) = U32(a, ab);
#else
        ST_F32(d, AT(d, i0, r.x, r.y, r.z), LD(TA, a, ab));
#endif
    }
#endif
}
