// get_rows: d[i0, i, i2, i3] = a[i0, b[i, i2, i3], i2, i3]; a work-group takes WG * EPT elements
// (or units) of one output row, whose index is the same for the whole group, so `a` may be
// windowed (weights.glsl).
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
    uint l = gl_LocalInvocationID.x;
#if defined(DEQ)
    uint n = NE(d).x / 16u;  // units of 16
#else
    uint n = NE(d).x;
#endif
    uint n_chunks = (n + WG * EPT - 1u) / (WG * EPT), g = group_index(), row = g / n_chunks;
    if (row >= NROWS(d)) return;
    uvec3 r = row_index(row, NE(d));
    uint src = U32(b, AT(b, r.x, r.y, r.z, 0u));
    uint base = A_WINDOW(OFF(a) + src * NB(a).y + r.y * NB(a).z + r.z * NB(a).w);
    uint first = (g - row * n_chunks) * (WG * EPT) + l;
    for (uint k = 0u; k < EPT; k++) {
        uint u = first + k * WG;
        if (u >= n) break;
#if defined(DEQ)
        float x[16];
        deq16(base, u, x);
        [[unroll]] for (uint j = 0; j < 16u; j++) ST_F32(d, AT(d, 16u * u + j, r.x, r.y, r.z), x[j]);
#elif defined(RAW32)
        U32(d, AT(d, u, r.x, r.y, r.z)) = U32(a, base + u * NB(a).x);
#else
        ST_F32(d, AT(d, u, r.x, r.y, r.z), LD(TA, a, base + u * NB(a).x));
#endif
    }
}
