// cont / dup / cpy: element i of src's logical order lands at element i of dst's.
// -DRAW=<c type>: same-type copy of raw elements (bit-exact, any plain type);
// else -DTS=<src type> -DTD=<dst type> convert through float.
#include "common.h"

#ifndef QUANT
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

#else
// cpy into Q8_0 / Q4_0 (-DQUANT=8 | 4, -DTS=<src type>): one work-item per block of 32 of
// dst, quantized as ggml's reference quantizers (graphir/quants.py), bit for bit.
__kernel void quantize(TENSOR(s), TENSOR(d)) {
    uint gid = get_global_id(0), nblk = (uint)d_ne.s0 / 32;
    if (gid >= NELEM(d) / 32) return;
    uint blk = gid % nblk, row = gid / nblk;
    int d1 = row % (uint)d_ne.s1, d2 = (row / (uint)d_ne.s1) % (uint)d_ne.s2;
    int d3 = row / ((uint)d_ne.s1 * (uint)d_ne.s2);
    float x[32], amax = 0.0f, mx = 0.0f;  // mx: the signed value of largest magnitude, first on ties
    for (int i = 0; i < 32; i++) {
        UNRAVEL(s, row * (uint)d_ne.s0 + blk * 32 + i, s0, s1, s2, s3);
        x[i] = LD(TS, AT(s, s0, s1, s2, s3));
        if (amax < fabs(x[i])) {
            amax = fabs(x[i]);
            mx = x[i];
        }
    }
#if QUANT == 8
    __global char *out = (__global char *)AT(d, 0, d1, d2, d3) + blk * 34;
    float dd = amax / 127.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
    for (int i = 0; i < 32; i++) out[2 + i] = (char)round(x[i] * id);
#else
    __global uchar *out = (__global uchar *)AT(d, 0, d1, d2, d3) + blk * 18;
    float dd = mx / -8.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
    for (int j = 0; j < 16; j++)
        out[2 + j] = (uchar)(min(15, (int)(x[j] * id + 8.5f)) | (min(15, (int)(x[j + 16] * id + 8.5f)) << 4));
#endif
    vstore_half_rte(dd, 0, (__global half *)out);
}
#endif
