/* Row conversions between float32 and every tensor type (graphir_cpu.h: gr_row_to_f32 and
 * gr_row_from_f32): the plain types F32, F16, BF16, I32 and the GGUF block formats.
 *
 * Block formats are bit-exact with graphir/quants.py: dequantization of Q8_0, Q4_0, Q4_K,
 * Q5_K, Q6_K, and quantization of Q8_0 and Q4_0 (ggml's reference quantizers). The K-quant
 * quantizers (our own scale search in quants.py) are not here: a cpy into a K-quant runs on the
 * reference (backends/cpu/ops.py `supports`), and gr_row_from_f32 leaves such a row untouched.
 *
 * Each loop body is written once (always_inline) and compiled three times: portable, AVX2 and
 * AVX-512 (target attributes, chosen at run time from gr_has_avx2 / gr_has_avx512). Only the
 * f16 conversions use intrinsics (F16C, AVX-512F); the rest is left to the vectorizer.
 */
/* NOTE: bit-exactness with numpy needs float32 evaluation in the reference's order: no fused
 * multiply-add (gnu11 contracts a*b+c by default), no reassociation. */
#pragma GCC optimize("fp-contract=off")
#include "graphir_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif

#define AI static inline __attribute__((always_inline))
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

static inline float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return gr_f16_to_f32(h);
}

static inline void f16_put(uint8_t *p, float v) {
    uint16_t h = gr_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* ======================================================================================
 * plain types
 * ====================================================================================== */

AI void bf16_to_f32_body(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, 4);
    }
}

AI void f32_to_bf16_body(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = gr_f32_to_bf16(x[i]);
}

AI void i32_to_f32_body(const int32_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = (float)x[i];
}

/* Truncation toward zero as a C cast; NaN and out-of-range values give INT32_MIN, which is
 * what x86's cvttss2si (and so numpy's astype) produces where C leaves it undefined. */
AI void f32_to_i32_body(const float *x, int32_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = (v >= -2147483648.0f && v < 2147483648.0f) ? (int32_t)v : INT32_MIN;
    }
}

/* ======================================================================================
 * dequantization (float32 operations in quants.py's order)
 * ====================================================================================== */

AI void deq_q8_0_body(const uint8_t *x, float *y, int64_t nblk) {
    for (int64_t i = 0; i < nblk; i++, x += 34, y += 32) {
        const float d = f16_at(x);
        const int8_t *q = (const int8_t *)(x + 2);
        for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
    }
}

AI void deq_q4_0_body(const uint8_t *x, float *y, int64_t nblk) {
    for (int64_t i = 0; i < nblk; i++, x += 18, y += 32) {
        const float d = f16_at(x);
        const uint8_t *qs = x + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

/* Q4_K / Q5_K: 6-bit scale and min of sub-block j from the 12 packed bytes (get_scale_min_k4) */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K (qh_bytes 0) or Q5_K (qh_bytes 32): x = (d*sc) * q - (dmin*m) per sub-block of 32;
 * sub-blocks 2c / 2c+1 take the low / high nibbles of qs[32c:32c+32], Q5_K's 5th bit of
 * sub-block s is bit s of qh[l]. */
AI void deq_k4_body(const uint8_t *x, float *y, int64_t nblk, int qh_bytes) {
    const int bsize = 16 + qh_bytes + 128;
    for (int64_t i = 0; i < nblk; i++, x += bsize, y += 256) {
        const float d = f16_at(x), dmin = f16_at(x + 2);
        const uint8_t *qh = x + 16, *qs = x + 16 + qh_bytes;
        for (int s = 0; s < 8; s++) {
            int sc, m;
            k4_scale_min(x + 4, s, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            const uint8_t *q = qs + 32 * (s / 2);
            const int shift = 4 * (s % 2);
            for (int l = 0; l < 32; l++) {
                int v = (q[l] >> shift) & 0xF;
                if (qh_bytes) v |= ((qh[l] >> s) & 1) << 4;
                y[32 * s + l] = d1 * (float)v - m1;
            }
        }
    }
}

/* Q6_K: x = (d*sc) * (q - 32) per sub-block of 16; element 32k+l of half h takes the low
 * (k < 2) or high nibble of ql[64h + l + 32(k%2)] and bits 2k..2k+1 of qh[32h + l]. */
AI void deq_q6_k_body(const uint8_t *x, float *y, int64_t nblk) {
    for (int64_t i = 0; i < nblk; i++, x += 210, y += 256) {
        const float d = f16_at(x + 208);
        const int8_t *sc = (const int8_t *)(x + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x + 64 * h, *qh = x + 128 + 32 * h;
            for (int k = 0; k < 4; k++) {
                const float d0 = d * (float)sc[8 * h + 2 * k], d1 = d * (float)sc[8 * h + 2 * k + 1];
                const uint8_t *lo = ql + 32 * (k % 2);
                const int shift = 4 * (k / 2);
                float *yk = y + 128 * h + 32 * k;
                for (int l = 0; l < 32; l++) {
                    int q = (((lo[l] >> shift) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                    yk[l] = (l < 16 ? d0 : d1) * (float)q;
                }
            }
        }
    }
}

/* ======================================================================================
 * quantization: Q8_0 and Q4_0, bit-exact with quants.py (= ggml's quantize_row_*_ref)
 * ====================================================================================== */

/* C roundf (half away from zero) as quants.py's _roundf writes it: exact for |v| < 2^31 */
static inline float round_half_away(float v) {
    float a = fabsf(v), f = (float)(int32_t)a;
    return copysignf(f + (a - f >= 0.5f ? 1.0f : 0.0f), v);
}

AI void q_q8_0_body(const float *x, uint8_t *y, int64_t nblk) {
    for (int64_t i = 0; i < nblk; i++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        f16_put(y, d);
        for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)(int8_t)round_half_away(x[j] * id);
    }
}

/* the signed value of largest magnitude (first on ties) maps to -8 */
AI void q_q4_0_body(const float *x, uint8_t *y, int64_t nblk) {
    for (int64_t i = 0; i < nblk; i++, x += 32, y += 18) {
        float amax = fabsf(x[0]), vmax = x[0];
        for (int j = 1; j < 32; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                vmax = x[j];
            }
        const float d = vmax / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        f16_put(y, d);
        uint8_t q[32];
        for (int j = 0; j < 32; j++) {
            const float v = x[j] * id + 8.5f; /* >= 0, so the cast truncates as trunc() */
            q[j] = v < 15.0f ? (uint8_t)v : 15;
        }
        for (int j = 0; j < 16; j++) y[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
    }
}

/* ======================================================================================
 * the bodies compiled per instruction set
 * ====================================================================================== */

#define VARIANTS(name, params, args)                      \
    static void name##_p params { name##_body args; }     \
    VARIANTS_X86(name, params, args)
#ifdef GR_X86
#define VARIANTS_X86(name, params, args)                         \
    T_AVX2 static void name##_avx2 params { name##_body args; }  \
    T_AVX512 static void name##_avx512 params { name##_body args; }
#define PICK(name) (gr_has_avx512 ? name##_avx512 : gr_has_avx2 ? name##_avx2 : name##_p)
#else
#define VARIANTS_X86(name, params, args)
#define PICK(name) name##_p
#endif

VARIANTS(bf16_to_f32, (const uint16_t *x, float *y, int64_t n), (x, y, n))
VARIANTS(f32_to_bf16, (const float *x, uint16_t *y, int64_t n), (x, y, n))
VARIANTS(i32_to_f32, (const int32_t *x, float *y, int64_t n), (x, y, n))
VARIANTS(f32_to_i32, (const float *x, int32_t *y, int64_t n), (x, y, n))
VARIANTS(deq_q8_0, (const uint8_t *x, float *y, int64_t nblk), (x, y, nblk))
VARIANTS(deq_q4_0, (const uint8_t *x, float *y, int64_t nblk), (x, y, nblk))
VARIANTS(deq_k4, (const uint8_t *x, float *y, int64_t nblk, int qh), (x, y, nblk, qh))
VARIANTS(deq_q6_k, (const uint8_t *x, float *y, int64_t nblk), (x, y, nblk))
VARIANTS(q_q8_0, (const float *x, uint8_t *y, int64_t nblk), (x, y, nblk))
VARIANTS(q_q4_0, (const float *x, uint8_t *y, int64_t nblk), (x, y, nblk))

/* f16 <-> f32: the table and the portable rounding; F16C / AVX-512 convert 8 / 16 at once
 * (round to nearest even, NaN kept quiet: the same bits as gr_f32_to_f16) */
static void f16_to_f32_p(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = gr_f16_to_f32(x[i]);
}

static void f32_to_f16_p(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = gr_f32_to_f16(x[i]);
}

#ifdef GR_X86
T_AVX2 static void f16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = gr_f16_to_f32(x[i]);
}

T_AVX2 static void f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = gr_f32_to_f16(x[i]);
}

T_AVX512 static void f16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))));
    if (i < n) { /* masked tail: no scalar loop for short rows */
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
    }
}

T_AVX512 static void f32_to_f16_avx512(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_mask_storeu_epi16(y + i, m, h);
    }
}
#endif

/* ======================================================================================
 * the entry points
 * ====================================================================================== */

void gr_row_to_f32(const char *src, int type, float *dst, int64_t n) {
    const int64_t nblk = n / gr_block_elems(type);
    const uint8_t *q = (const uint8_t *)src;
    switch (type) {
    case GR_F32: memmove(dst, src, (size_t)n * sizeof(float)); break;
    case GR_F16: PICK(f16_to_f32)((const uint16_t *)src, dst, n); break;
    case GR_BF16: PICK(bf16_to_f32)((const uint16_t *)src, dst, n); break;
    case GR_I32: PICK(i32_to_f32)((const int32_t *)src, dst, n); break;
    case GR_Q8_0: PICK(deq_q8_0)(q, dst, nblk); break;
    case GR_Q4_0: PICK(deq_q4_0)(q, dst, nblk); break;
    case GR_Q4_K: PICK(deq_k4)(q, dst, nblk, 0); break;
    case GR_Q5_K: PICK(deq_k4)(q, dst, nblk, 32); break;
    case GR_Q6_K: PICK(deq_q6_k)(q, dst, nblk); break;
    default: break;
    }
}

void gr_row_from_f32(const float *src, int type, char *dst, int64_t n) {
    const int64_t nblk = n / gr_block_elems(type);
    uint8_t *q = (uint8_t *)dst;
    switch (type) {
    case GR_F32: memmove(dst, src, (size_t)n * sizeof(float)); break;
    case GR_F16: PICK(f32_to_f16)(src, (uint16_t *)dst, n); break;
    case GR_BF16: PICK(f32_to_bf16)(src, (uint16_t *)dst, n); break;
    case GR_I32: PICK(f32_to_i32)(src, (int32_t *)dst, n); break;
    case GR_Q8_0: PICK(q_q8_0)(src, q, nblk); break;
    case GR_Q4_0: PICK(q_q4_0)(src, q, nblk); break;
    default: break; /* K-quants: not quantized natively (see the top of this file) */
    }
}
