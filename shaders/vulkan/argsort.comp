// argsort (stable; -DDESC for descending) and top_k (the first ne0(d) of the stable descending
// order): one invocation per element counts the elements ranked before it and writes its own
// index at that rank, O(ne0^2) per row, exact. A work-group takes WG elements of one row.
#version 450
#define N_TENSORS 2
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, d, );

void main() {
    uint n_chunks = (NE(a).x + WG - 1) / WG, g = group_index();
    uint row = g / n_chunks, i0 = (g - row * n_chunks) * WG + gl_LocalInvocationID.x;
    if (row >= NROWS(a) || i0 >= NE(a).x) return;
    uvec3 r = row_index(row, NE(a));
    uint base = AT(a, 0u, r.x, r.y, r.z);
    float x = LD_F32(a, base + i0 * NB(a).x);
    uint rank = 0;
    for (uint j = 0; j < NE(a).x; j++) {
        float y = LD_F32(a, base + j * NB(a).x);
#ifdef DESC
        rank += uint(y > x || (y == x && j < i0));
#else
        rank += uint(y < x || (y == x && j < i0));
#endif
    }
    if (rank < NE(d).x) U32(d, AT(d, rank, r.x, r.y, r.z)) = i0;
}
