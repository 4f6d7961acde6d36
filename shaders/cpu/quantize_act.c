/* Activation rows (rows of mul_mat's b) converted once into the format their weights' dot
 * products read (matmul.h): F32 rows, Q8 pairs (Q8_0/Q4_0 weights), Q8R rows (repacked Q8_0)
 * or Q8K super-blocks (K-quants). The quantization follows ggml's x86 path (quantize_row_q8_0:
 * scale amax/127, round half to even) and quantize_row_q8_K_ref. The AVX2 blocks give the same bytes as the
 * portable ones (the same float products, rounding by cvtps2dq = round half to even). */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GR_X86 1
#endif
#include "matmul.h"

/* round half to even for |v| < 2^22 (ggml's nearest_int), as cvtps2dq does */
static inline int rint_small(float v) {
    union { float f; int32_t i; } u;
    u.f = v + 12582912.f;
    return (u.i & 0x007fffff) - 0x00400000;
}

static inline int clamp127(int v) { return v < -127 ? -127 : v > 127 ? 127 : v; }

int64_t gr_act_row_bytes(int act, int64_t K) {
    switch (act) {
    case GR_ACT_Q8: return (gr_q8_pairs(K) * 72 + 63) / 64 * 64; /* 64 quants + 2 scales a pair */
    case GR_ACT_Q8K: return (K + 255) / 256 * (int64_t)sizeof(gr_q8k);
    case GR_ACT_Q8R: return ((K + 63) / 64 * 64 + 8 * (K / 32) + 63) / 64 * 64; /* quants, (d, -128 sum) a block */
    default: return (K * 4 + 63) / 64 * 64;
    }
}

/* n (<= 256) elements of b from src (stride sb) as float */
static void load_f(const char *src, int type, int64_t sb, int n, float *x) {
    if (type == GR_F32 && sb == 4) {
        memcpy(x, src, (size_t)n * 4);
        return;
    }
    for (int i = 0; i < n; i++) x[i] = gr_load_f(src + i * sb, type);
}

/* one 32-element block: its quants and its scale */
static void q8_block(const float *x, int8_t *q, float *d) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < 32; i++) q[i] = (int8_t)clamp127(rint_small(x[i] * id));
    *d = gr_f16_to_f32(gr_f32_to_f16(amax / 127.0f)); /* the scale as block_q8_0 stores it */
}

static void q8k_block(const float *x, gr_q8k *b) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < 256; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    memset(b, 0, sizeof(*b));
    if (amax == 0.0f) return;
    float iscale = -127.0f / max;
    for (int i = 0; i < 256; i++) b->qs[i] = (int8_t)clamp127(rint_small(iscale * x[i]));
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int i = 0; i < 16; i++) s += b->qs[16 * g + i];
        b->bsums[g] = (int16_t)s;
    }
    for (int g = 0; g < 8; g++) b->bsum32[g] = (int16_t)(b->bsums[2 * g] + b->bsums[2 * g + 1]);
    b->d = 1.0f / iscale;
}

#ifdef GR_X86
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* 32 floats times s, rounded half to even and clamped to +-127, as 32 bytes */
AVX2 static __m256i q8_32(const float *x, float s) {
    __m256 vs = _mm256_set1_ps(s);
    __m256i lim = _mm256_set1_epi32(127), q[4];
    for (int i = 0; i < 4; i++) {
        __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i), vs));
        q[i] = _mm256_min_epi32(_mm256_max_epi32(v, _mm256_sub_epi32(_mm256_setzero_si256(), lim)), lim);
    }
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)); /* undo the lane interleave */
}

/* int32 sums of each 4 consecutive bytes */
AVX2 static __m256i sum4(__m256i q) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
}

AVX2 static void q8_block_avx2(const float *x, int8_t *q, float *d) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_and_ps(_mm256_loadu_ps(x), abs);
    for (int i = 1; i < 4; i++) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + 8 * i), abs));
    float amax = hmax8(m);
    _mm256_storeu_si256((__m256i *)q, q8_32(x, amax != 0.0f ? 127.0f / amax : 0.0f));
    *d = gr_f16_to_f32(gr_f32_to_f16(amax / 127.0f));
}

AVX2 static void q8k_block_avx2(const float *x, gr_q8k *b) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + 8 * i), abs));
    float amax = hmax8(m), max = 0.0f;
    memset(b, 0, sizeof(*b));
    if (amax == 0.0f) return;
    for (int i = 0; i < 32; i++) { /* the first element of largest magnitude, as the scalar loop finds it */
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * i), abs), _mm256_set1_ps(amax), _CMP_EQ_OQ));
        if (hit) {
            max = x[8 * i + __builtin_ctz((unsigned)hit)];
            break;
        }
    }
    float iscale = -127.0f / max;
    for (int i = 0; i < 8; i++) {
        __m256i q = q8_32(x + 32 * i, iscale);
        _mm256_storeu_si256((__m256i *)(b->qs + 32 * i), q);
        __m256i s = sum4(q); /* 4-sums: 0-3 elements 0..15, 4-7 elements 16..31 */
        s = _mm256_hadd_epi32(s, s);
        s = _mm256_hadd_epi32(s, s);
        b->bsums[2 * i] = (int16_t)_mm256_extract_epi32(s, 0);
        b->bsums[2 * i + 1] = (int16_t)_mm256_extract_epi32(s, 4);
        b->bsum32[i] = (int16_t)(b->bsums[2 * i] + b->bsums[2 * i + 1]);
    }
    b->d = 1.0f / iscale;
}
#endif

void gr_act_row(const char *src, int type, int64_t sb, int64_t n, int act, char *dst) {
    float x[256];
    if (act == GR_ACT_F32) {
        float *y = (float *)dst;
        if (type == GR_F32) {
            for (int64_t i = 0; i < n; i++) y[i] = *(const float *)(src + i * sb);
        } else {
            for (int64_t i = 0; i < n; i++) y[i] = gr_load_f(src + i * sb, type);
        }
        memset(y + n, 0, (size_t)(gr_act_row_bytes(act, n) - n * 4));
        return;
    }
    if (act == GR_ACT_Q8 || act == GR_ACT_Q8R) {
        /* GR_ACT_Q8: the quants stored offset by 128 (q ^ 0x80): unsigned bytes for vpdpbusd;
         * GR_ACT_Q8R: signed, each block's scale and -128 * sum(q) after them */
        int r = act == GR_ACT_Q8R;
        float *d = r ? (float *)gr_q8r_meta(dst, n) : (float *)gr_q8_scales(dst, n);
        int64_t nq = r ? (n + 63) / 64 * 64 : 64 * gr_q8_pairs(n);
        memset(dst, r ? 0 : 0x80, (size_t)nq);
        memset(dst + nq, 0, (size_t)(gr_act_row_bytes(act, n) - nq));
        for (int64_t j = 0; j < n / 32; j++) {
            int8_t *q = (int8_t *)dst + 32 * j;
            float *dj = r ? d + 2 * j : d + j;
            load_f(src + 32 * j * sb, type, sb, 32, x);
#ifdef GR_X86
            if (gr_has_avx2) q8_block_avx2(x, q, dj);
            else
#endif
                q8_block(x, q, dj);
            if (r) {
                int32_t s = 0;
                for (int i = 0; i < 32; i++) s += q[i];
                s *= -128;
                memcpy(dj + 1, &s, 4);
            } else {
                for (int i = 0; i < 32; i++) q[i] = (int8_t)((uint8_t)q[i] ^ 0x80);
            }
        }
        return;
    }
    gr_q8k *b = (gr_q8k *)dst;
    for (int64_t i0 = 0; i0 < n; i0 += 256, b++) {
        load_f(src + i0 * sb, type, sb, 256, x);
#ifdef GR_X86
        if (gr_has_avx2) {
            q8k_block_avx2(x, b);
            continue;
        }
#endif
        q8k_block(x, b);
    }
}
