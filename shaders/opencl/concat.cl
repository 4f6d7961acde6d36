// concat along -DDIM=0..3 and repeat (-DREPEAT: d's index modulo a.ne); raw elements (-DRAW=<c type>).
#include "common.h"

__kernel void concat(TENSOR(a), TENSOR(b), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, i0, i1, i2, i3);
    __global char *p = AT(d, i0, i1, i2, i3);
#ifdef REPEAT
    *(__global RAW *)p = *(__global const RAW *)AT(a, i0 % a_ne.s0, i1 % a_ne.s1, i2 % a_ne.s2, i3 % a_ne.s3);
#else
    int n = DIM == 0 ? a_ne.s0 : DIM == 1 ? a_ne.s1 : DIM == 2 ? a_ne.s2 : a_ne.s3;
    int k = DIM == 0 ? i0 : DIM == 1 ? i1 : DIM == 2 ? i2 : i3;
    if (k < n) {
        *(__global RAW *)p = *(__global const RAW *)AT(a, i0, i1, i2, i3);
    } else {  // shift the concat dim back into b
        int j0 = i0 - (DIM == 0 ? n : 0), j1 = i1 - (DIM == 1 ? n : 0);
        int j2 = i2 - (DIM == 2 ? n : 0), j3 = i3 - (DIM == 3 ? n : 0);
        *(__global RAW *)p = *(__global const RAW *)AT(b, j0, j1, j2, j3);
    }
#endif
}
