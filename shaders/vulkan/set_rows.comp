// set_rows: d[i0, c[i, i2 % c.ne1, i3 % c.ne2], i2, i3] = b[i0, i, i2, i3], converted to d's type
// (-DTD=F32|F16|BF16; d is the destination tensor's memory). One invocation per (i0, i2, i3)
// walks the rows in order, so a repeated index keeps the last row (as ggml). A work-group takes
// WG elements of one (i2, i3) plane.
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, b, readonly);
TENSOR(2, c, readonly);
TENSOR(3, d, );

void main() {
    uint n_chunks = (NE(b).x + WG - 1) / WG, g = group_index();
    uint plane = g / n_chunks, i0 = (g - plane * n_chunks) * WG + gl_LocalInvocationID.x;
    if (plane >= NE(b).z * NE(b).w || i0 >= NE(b).x) return;
    uint i2 = plane % NE(b).z, i3 = plane / NE(b).z;
    for (uint i = 0; i < NE(b).y; i++) {
        uint row = U32(c, AT(c, i, i2 % NE(c).y, i3 % NE(c).z, 0u));
        uint db = AT(d, i0, row, i2, i3);
        ST(TD, d, db, LD_F32(b, AT(b, i0, i, i2, i3)));
    }
}
