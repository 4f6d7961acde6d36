// argsort (stable, -DDESC for descending) and top_k (-DTOP_K: the first k of the stable
// descending order): one work-item per element counts the elements ranked before it and
// writes its own index at that rank. O(ne0^2) per row, exact.
#include "common.h"

__kernel void argsort(TENSOR(a), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(a)) return;
    UNRAVEL(a, idx, i0, i1, i2, i3);
    float x = LD_F32(AT(a, i0, i1, i2, i3));
    int rank = 0;
    for (int j = 0; j < a_ne.s0; j++) {
        float y = LD_F32(AT(a, j, i1, i2, i3));
#ifdef DESC
        rank += y > x || (y == x && j < i0);
#else
        rank += y < x || (y == x && j < i0);
#endif
    }
    if (rank < d_ne.s0) *(__global int *)AT(d, rank, i1, i2, i3) = i0;
}
