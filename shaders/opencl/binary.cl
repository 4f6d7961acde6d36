// add / sub / mul / div with ggml broadcast: b's index is dst's modulo b.ne.
// -DOP_ADD|OP_SUB|OP_MUL|OP_DIV, -DTA, -DTB, -DTD element types.
#include "common.h"

__kernel void binary(TENSOR(a), TENSOR(b), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, i0, i1, i2, i3);
    float x = LD(TA, AT(a, i0, i1, i2, i3));
    float y = LD(TB, AT(b, i0 % b_ne.s0, i1 % b_ne.s1, i2 % b_ne.s2, i3 % b_ne.s3));
#if defined(OP_ADD)
    float r = x + y;
#elif defined(OP_SUB)
    float r = x - y;
#elif defined(OP_MUL)
    float r = x * y;
#else
    float r = x / y;
#endif
    ST(TD, AT(d, i0, i1, i2, i3), r);
}
