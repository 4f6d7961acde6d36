// add / sub / mul / div with ggml's broadcast: b's index is d's modulo b.ne.
// -DOP_ADD|OP_SUB|OP_MUL|OP_DIV, -DTA, -DTB, -DTD element types (F32|F16); elements by FOR_ELEMENTS (common.glsl).
#version 450
#define N_TENSORS 3
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, b, readonly);
TENSOR(3, d, );

void element(uint i0, uvec3 r) {
    uint j0 = i0 < NE(b).x ? i0 : i0 % NE(b).x;
    float x = LD(TA, a, AT(a, i0, r.x, r.y, r.z));
    float y = LD(TB, b, AT(b, j0, r.x % NE(b).y, r.y % NE(b).z, r.z % NE(b).w));
#if defined(OP_ADD)
    float v = x + y;
#elif defined(OP_SUB)
    float v = x - y;
#elif defined(OP_MUL)
    float v = x * y;
#else
    float v = x / y;
#endif
    uint db = AT(d, i0, r.x, r.y, r.z);
    ST(TD, d, db, v);
}

void main() FOR_ELEMENTS(NE(d))
