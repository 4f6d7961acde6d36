// cont / dup / cpy: element i of src's logical order lands at element i of dst's.
// -DRAW=<c type>: same-type copy of raw elements (bit-exact, any plain type);
// else -DTS=<src type> -DTD=<dst type> convert through float.
#include "common.h"

__kernel void copy(TENSOR(s), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(s, idx, s0, s1, s2, s3);
    UNRAVEL(d, idx, d0, d1, d2, d3);
#ifdef RAW
    *(__global RAW *)AT(d, d0, d1, d2, d3) = *(__global const RAW *)AT(s, s0, s1, s2, s3);
#else
    ST(TD, AT(d, d0, d1, d2, d3), LD(TS, AT(s, s0, s1, s2, s3)));
#endif
}
