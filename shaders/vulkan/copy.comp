// cont / dup / cpy: element i of s's logical order lands at element i of d's.
// -DRAW32 / -DRAW16: same-type copy of 4- / 2-byte elements (bit-exact); else -DTS, -DTD
// (F32|F16|BF16|I32) convert through float. -DSAME_NE: s and d have one shape, elements by
// FOR_ELEMENTS (common.glsl); else flat indices unravelled in both, WG * EPT per work-group.
// -DQUANT=8|4: into Q8_0 / Q4_0 (-DTS the source type), one invocation per block of 32 of d,
// quantized as ggml's reference quantizers (graphir/quants.py), bit for bit.
#version 450
#define N_TENSORS 2
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, s, readonly);
TENSOR(2, d, );

#ifndef QUANT
void copy_element(uint sb, uint db) {
#if defined(RAW32)
    U32(d, db) = U32(s, sb);
#elif defined(RAW16)
    ST_U16(d, db, HALF_BITS(s, sb));
#else
    ST(TD, d, db, LD(TS, s, sb));
#endif
}

#ifdef SAME_NE
void element(uint i0, uvec3 r) { copy_element(AT(s, i0, r.x, r.y, r.z), AT(d, i0, r.x, r.y, r.z)); }

void main() FOR_ELEMENTS(NE(d))
#else
void main() {
    uint base = group_index() * (WG * EPT) + gl_LocalInvocationID.x;
    for (uint k = 0u; k < EPT; k++) {
        uint idx = base + k * WG;
        if (idx >= NELEM(d)) return;
        uvec4 si = unravel(idx, NE(s)), di = unravel(idx, NE(d));
        copy_element(AT(s, si.x, si.y, si.z, si.w), AT(d, di.x, di.y, di.z, di.w));
    }
}
#endif

#else
// C roundf: half away from zero
float round_away(float v) {
    float a = abs(v), f = floor(a);
    float r = f + ((a - f >= 0.5) ? 1.0 : 0.0);
    return v < 0.0 ? -r : r;
}

// Q4_0's quant of x: trunc(x / d + 8.5) clamped to 15, the two operations rounded apart
uint q4(float x, float id) {
    precise float v = x * id + 8.5;
    return uint(min(15, int(v)));
}

void main() {
    uint nblk = NE(d).x / 32u, gid = group_index() * WG + gl_LocalInvocationID.x;
    if (gid >= nblk * NROWS(d)) return;
    uint blk = gid % nblk, row = gid / nblk;
    uvec3 r = row_index(row, NE(d));
    float x[32];
    float amax = 0.0, mx = 0.0;  // mx: the signed value of largest magnitude, first on ties
    for (uint i = 0; i < 32u; i++) {
        uvec4 si = unravel(row * NE(d).x + blk * 32u + i, NE(s));
        x[i] = LD(TS, s, AT(s, si.x, si.y, si.z, si.w));
        if (amax < abs(x[i])) {
            amax = abs(x[i]);
            mx = x[i];
        }
    }
    // the block as half-words: f16 scale, then the quants
#if QUANT == 8
    const uint NH = 17u;
    float dd = amax / 127.0, id = dd != 0.0 ? 1.0 / dd : 0.0;
    uint h[NH];
    h[0] = f32_to_f16(dd);
    for (uint j = 0; j < 16u; j++) {
        uint q0 = uint(int(round_away(x[2u * j] * id))) & 0xFFu, q1 = uint(int(round_away(x[2u * j + 1u] * id))) & 0xFFu;
        h[1u + j] = q0 | (q1 << 8);
    }
#else
    const uint NH = 9u;
    float dd = mx / -8.0, id = dd != 0.0 ? 1.0 / dd : 0.0;
    uint h[NH];
    h[0] = f32_to_f16(dd);
    for (uint j = 0; j < 8u; j++) {
        uint b0 = q4(x[2u * j], id) | (q4(x[2u * j + 16u], id) << 4);
        uint b1 = q4(x[2u * j + 1u], id) | (q4(x[2u * j + 17u], id) << 4);
        h[1u + j] = b0 | (b1 << 8);
    }
#endif
    // whole words where the block covers both halves; the edge halves a neighbour block shares, atomically
    uint base = AT(d, 0u, r.x, r.y, r.z) + blk * (2u * NH);
    for (uint j = 0; j < NH;) {
        uint b = base + 2u * j;
        if ((b & 2u) == 0u && j + 1u < NH) {
            U32(d, b) = h[j] | (h[j + 1u] << 16);
            j += 2u;
        } else {
            ST_U16(d, b, h[j]);
            j += 1u;
        }
    }
}
#endif
