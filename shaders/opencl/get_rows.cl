// get_rows: d[i0, i, i2, i3] = a[i0, b[i, i2, i3], i2, i3].
// -DTA=F32|F16|BF16 (float result) or -DRAW=int (I32 copy): one work-item per element;
// -DDEQ=deq16_q8_0|... (common.h): one work-item per 16 elements of a block-quantized row;
// -DROW4: a 4-byte type into itself, rows contiguous, ne0 % 4 == 0: one work-item per 4 elements.
#include "common.h"

__kernel void get_rows(TENSOR(a), TENSOR(b), TENSOR(d)) {
    ulong idx = get_global_id(0);
#if defined(DEQ)
    uint units = (uint)d_ne.s0 / 16;
    if (idx >= NELEM(d) / 16) return;
    uint rest = (uint)idx / units, r2 = rest / (uint)d_ne.s1;
    int u = (int)((uint)idx % units), i1 = (int)(rest % (uint)d_ne.s1);
    int i2 = (int)(r2 % (uint)d_ne.s2), i3 = (int)(r2 / (uint)d_ne.s2);
    int row = *(__global const int *)AT(b, i1, i2, i3, 0);
    float w[16];
    vstore16(DEQ(AT(a, 0, row, i2, i3), u), 0, w);
    for (int i = 0; i < 16; i++) ST_F32(AT(d, 16 * u + i, i1, i2, i3), w[i]);
#elif defined(ROW4)
    // contiguous 4-byte rows, ne0 % 4 == 0: one work-item per 4 elements, copied as bits
    uint units = (uint)d_ne.s0 / 4;
    if (idx >= NELEM(d) / 4) return;
    uint rest = (uint)idx / units, r2 = rest / (uint)d_ne.s1;
    int u = (int)((uint)idx % units), i1 = (int)(rest % (uint)d_ne.s1);
    int i2 = (int)(r2 % (uint)d_ne.s2), i3 = (int)(r2 / (uint)d_ne.s2);
    int row = *(__global const int *)AT(b, i1, i2, i3, 0);
    vstore4(vload4(u, (__global const uint *)AT(a, 0, row, i2, i3)), u, (__global uint *)AT(d, 0, i1, i2, i3));
#else
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, i0, i1, i2, i3);
    int row = *(__global const int *)AT(b, i1, i2, i3, 0);
#if defined(RAW)
    *(__global RAW *)AT(d, i0, i1, i2, i3) = *(__global const RAW *)AT(a, i0, row, i2, i3);
#else
    ST_F32(AT(d, i0, i1, i2, i3), LD(TA, AT(a, i0, row, i2, i3)));
#endif
#endif
}
