// set_rows: d[i0, c[i, i2 % c.ne1, i3 % c.ne2], i2, i3] = b[i0, i, i2, i3], converted to d's type
// (-DTD=F32|F16|BF16; d is the destination tensor's memory). One invocation per (i0, i2, i3)
// walks the rows in order, so a repeated index keeps the last row (as ggml); (i0, i2, i3) by
// FOR_ELEMENTS (common.glsl) over a [ne0, ne2, ne3] shape.
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, b, readonly);
TENSOR(2, c, readonly);
TENSOR(3, d, );

void element(uint i0, uvec3 r) {  // r = (i2, i3, 0)
    for (uint i = 0; i < NE(b).y; i++) {
        uint row = U32(c, AT(c, i, r.x % NE(c).y, r.y % NE(c).z, 0u));
        uint db = AT(d, i0, row, r.x, r.y);
        ST(TD, d, db, LD_F32(b, AT(b, i0, i, r.x, r.y)));
    }
}

void main() FOR_ELEMENTS(uvec4(NE(b).x, NE(b).z, NE(b).w, 1u))
