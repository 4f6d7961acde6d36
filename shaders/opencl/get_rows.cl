// get_rows: d[i0, i, i2, i3] = a[i0, b[i, i2, i3], i2, i3], one work-item per element.
// -DTA=F32|F16|BF16 (float result), -DDEQ=deq_q8_0|deq_q4_0 (common.h), -DRAW=int (I32 copy).
#include "common.h"

__kernel void get_rows(TENSOR(a), TENSOR(b), TENSOR(d)) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, i0, i1, i2, i3);
    int row = *(__global const int *)AT(b, i1, i2, i3, 0);
#if defined(DEQ)
    ST_F32(AT(d, i0, i1, i2, i3), DEQ(AT(a, 0, row, i2, i3), i0));
#elif defined(RAW)
    *(__global RAW *)AT(d, i0, i1, i2, i3) = *(__global const RAW *)AT(a, i0, row, i2, i3);
#else
    ST_F32(AT(d, i0, i1, i2, i3), LD(TA, AT(a, i0, row, i2, i3)));
#endif
}
