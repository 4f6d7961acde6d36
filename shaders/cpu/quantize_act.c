/* Activation rows (rows of mul_mat's b) converted once into the format their weights' dot
 * products read (matmul.h): F32 rows, Q8 pairs (Q8_0/Q4_0 weights) or Q8K super-blocks
 * (K-quants). The quantization follows ggml's x86 path (quantize_row_q8_0: scale amax/127,
 * round half to even) and quantize_row_q8_K_ref; scalar code only: a row is quantized once
 * per token, while its weights are read once per weight row. */
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
    case GR_ACT_Q8: return (K + 63) / 64 * (int64_t)sizeof(gr_q8_pair);
    case GR_ACT_Q8K: return (K + 255) / 256 * (int64_t)sizeof(gr_q8k);
    default: return (K * 4 + 63) / 64 * 64;
    }
}

int gr_act_q8_corr(int wtype) { return wtype == GR_Q4_0 ? 8 : 128; }

/* n (<= 256) elements of b from src (stride sb) as float */
static void load_f(const char *src, int type, int64_t sb, int n, float *x) {
    if (type == GR_F32 && sb == 4) {
        memcpy(x, src, (size_t)n * 4);
        return;
    }
    for (int i = 0; i < n; i++) x[i] = gr_load_f(src + i * sb, type);
}

/* one 32-element block into half h of a pair */
static void q8_block(const float *x, gr_q8_pair *p, int h, int corr) {
    float amax = 0.0f;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    float dq = gr_f16_to_f32(gr_f32_to_f16(d)); /* the scale as block_q8_0 stores it */
    int8_t *q = p->qs + 32 * h;
    for (int i = 0; i < 32; i++) q[i] = (int8_t)clamp127(rint_small(x[i] * id));
    for (int l = 0; l < 8; l++) {
        int s = q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3];
        p->corr[8 * h + l] = -corr * s;
        p->d[8 * h + l] = dq;
    }
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

void gr_act_row(const char *src, int type, int64_t sb, int64_t n, int act, int corr, char *dst) {
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
    if (act == GR_ACT_Q8) {
        gr_q8_pair *p = (gr_q8_pair *)dst;
        for (int64_t i0 = 0; i0 < n; i0 += 64, p++) {
            int m = n - i0 < 64 ? (int)(n - i0) : 64; /* 32 or 64 */
            load_f(src + i0 * sb, type, sb, m, x);
            memset(p, 0, sizeof(*p));
            q8_block(x, p, 0, corr);
            if (m == 64) q8_block(x + 32, p, 1, corr);
        }
        return;
    }
    gr_q8k *b = (gr_q8k *)dst;
    for (int64_t i0 = 0; i0 < n; i0 += 256, b++) {
        load_f(src + i0 * sb, type, sb, 256, x);
        q8k_block(x, b);
    }
}
