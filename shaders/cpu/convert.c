/* Scalar type conversions shared by every kernel family: f16 <-> f32 (a 64K-entry table for
 * f16 -> f32; round-to-nearest-even for f32 -> f16, as numpy's astype and ggml do). */
#include "graphir_cpu.h"

float gr_f16_table[65536];

static float f16_bits_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        if (mant == 0) {
            v.u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { mant <<= 1; e++; } while (!(mant & 0x400));
            v.u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 0x1f) {
        v.u = sign | 0x7f800000u | (mant << 13); /* inf / NaN */
    } else {
        v.u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    return v.f;
}

void gr_init_tables(void) {
    for (uint32_t i = 0; i < 65536; i++) gr_f16_table[i] = f16_bits_to_f32((uint16_t)i);
}

uint16_t gr_f32_to_f16(float f) {
    union { uint32_t u; float f; } v;
    v.f = f;
    uint32_t x = v.u, sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* NaN stays NaN */
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000) { /* below the smallest normal f16: subnormal or zero */
        if (ax < 0x33000000) return (uint16_t)sign; /* < 2^-25: rounds to zero */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14 + (113 - e) */
        uint32_t half = m >> shift, rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1) - 0x38000000; /* rebias, round to nearest even */
    return (uint16_t)(sign | (r >> 13));
}

int gr_block_elems(int type) {
    switch (type) {
    case GR_Q8_0: case GR_Q4_0: return 32;
    case GR_Q4_K: case GR_Q5_K: case GR_Q6_K: return 256;
    default: return 1;
    }
}

int gr_block_bytes(int type) {
    switch (type) {
    case GR_F32: case GR_I32: return 4;
    case GR_F16: case GR_BF16: return 2;
    case GR_Q8_0: return 34;
    case GR_Q4_0: return 18;
    case GR_Q4_K: return 144;
    case GR_Q5_K: return 176;
    case GR_Q6_K: return 210;
    default: return 0;
    }
}
