// set_rows: a[i0, c[i, i2 % c.ne1, i3 % c.ne2], i2, i3] = b[i0, i, i2, i3], converted to a's type (-DTD).
// One work-item per (i0, i2, i3) walks the rows in order, so a repeated index keeps the last row (as ggml).
#include "common.h"

__kernel void set_rows(TENSOR(b), TENSOR(c), TENSOR(d)) {
    ulong idx = get_global_id(0);
#ifdef ROW4  // F32 into F32, rows contiguous, ne0 % 4 == 0: one work-item per 4 elements, copied as bits
    int units = b_ne.s0 / 4;
    if (idx >= (ulong)units * b_ne.s2 * b_ne.s3) return;
    int u = idx % units, i2 = (idx / units) % b_ne.s2, i3 = idx / ((ulong)units * b_ne.s2);
    for (int i = 0; i < b_ne.s1; i++) {
        int row = *(__global const int *)AT(c, i, i2 % c_ne.s1, i3 % c_ne.s2, 0);
        vstore4(vload4(u, (__global const uint *)AT(b, 0, i, i2, i3)), u, (__global uint *)AT(d, 0, row, i2, i3));
    }
#else
    if (idx >= (ulong)b_ne.s0 * b_ne.s2 * b_ne.s3) return;
    int i0 = idx % b_ne.s0, i2 = (idx / b_ne.s0) % b_ne.s2, i3 = idx / ((ulong)b_ne.s0 * b_ne.s2);
    for (int i = 0; i < b_ne.s1; i++) {
        int row = *(__global const int *)AT(c, i, i2 % c_ne.s1, i3 % c_ne.s2, 0);
        ST(TD, AT(d, i0, row, i2, i3), LD_F32(AT(b, i0, i, i2, i3)));
    }
#endif
}
