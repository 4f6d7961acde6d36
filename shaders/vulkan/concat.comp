// concat along -DDIM=0..3 and repeat (-DREPEAT: d's index modulo a.ne; binding b is a and
// unused); raw elements of 4 (-DRAW32) or 2 (-DRAW16) bytes; elements of d by FOR_ELEMENTS
// (common.glsl).
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, b, readonly);
TENSOR(3, d, );

void element(uint i0, uvec3 r) {
    uvec4 i = uvec4(i0, r);
#ifdef REPEAT
    uint sb = AT(a, i.x % NE(a).x, i.y % NE(a).y, i.z % NE(a).z, i.w % NE(a).w);
#else
    uint n = NE(a)[DIM];
    bool from_a = i[DIM] < n;
    uvec4 j = i;
    j[DIM] -= from_a ? 0u : n;  // shift the concat dim back into b
    uint sb = from_a ? AT(a, j.x, j.y, j.z, j.w) : AT(b, j.x, j.y, j.z, j.w);
#endif
    uint db = AT(d, i.x, i.y, i.z, i.w);
#if defined(RAW32)
#ifdef REPEAT
    U32(d, db) = U32(a, sb);
#else
    U32(d, db) = from_a ? U32(a, sb) : U32(b, sb);
#endif
#else
#ifdef REPEAT
    uint h = HALF_BITS(a, sb);
#else
    uint h = from_a ? HALF_BITS(a, sb) : HALF_BITS(b, sb);
#endif
    ST_U16(d, db, h);
#endif
}

void main() FOR_ELEMENTS(NE(d))
