/* Rotary position embedding (GR_OP_ROPE): modes NORMAL, NEOX, MROPE and IMROPE (sections),
 * YaRN, optional frequency factors. Numerics are backends/ref/k_rope.py's (ggml-cpu's rope):
 * all float32; the angle of pair i is built by repeated float32 multiplication,
 * theta_i = ((p * s) * s) ... * s with s = powf(freq_base, -2/n_dims), never by pow, so that
 * the rounding matches; multi-section modes run one such chain per position component and
 * pair i takes the chain of its component.
 *
 * Rows are (head i1, token i2, i3); threads take contiguous chunks of rows. Each thread keeps
 * the cos/sin of one token in its scratch and rebuilds it when the token changes (a head's
 * row only rotates). Only the first n_dims dims rotate; the rest are copied. Correct when dst
 * aliases src[0]: every pair is read before it is written.
 *
 * Record: ip[0] n_dims, ip[1] mode, ip[2] n_ctx_orig, ip[3..6] sections; fp[0] freq_base,
 * fp[1] freq_scale, fp[2] ext_factor, fp[3] attn_factor, fp[6..7] YaRN corr dims (low, high).
 */
#include "graphir_cpu.h"

#include <stdbool.h>

enum { ROPE_NORMAL = 0, ROPE_NEOX = 2, ROPE_MROPE = 8, ROPE_IMROPE = 40 };

typedef struct {
    int64_t n_pairs, n_tokens;
    int mode;
    bool multi;
    const int32_t *sections; /* [4] */
    float theta_scale, freq_scale, ext_factor, mscale, corr_lo, corr_hi;
    const gr_tensor *pos, *ff; /* ff: NULL without frequency factors */
} rope_params;

static rope_params params_of(const gr_op *op) {
    rope_params p;
    int n_dims = op->ip[0];
    p.n_pairs = n_dims / 2;
    p.n_tokens = op->src[0].ne[2];
    p.mode = op->ip[1];
    p.multi = p.mode == ROPE_MROPE || p.mode == ROPE_IMROPE;
    p.sections = &op->ip[3];
    p.theta_scale = powf(op->fp[0], -2.0f / (float)n_dims);
    p.freq_scale = op->fp[1];
    p.ext_factor = op->fp[2];
    p.mscale = op->fp[3];
    if (p.ext_factor != 0.0f) p.mscale *= 1.0f + 0.1f * logf(1.0f / p.freq_scale); /* YaRN's magnitude fix */
    p.corr_lo = op->fp[6];
    p.corr_hi = op->fp[7];
    p.pos = &op->src[1];
    p.ff = op->n_src > 2 && op->src[2].data ? &op->src[2] : NULL;
    return p;
}

/* the position component (0..3) pair i takes its angle from: its sector i % sum(sections)
 * by contiguous sections (MROPE) or interleaved t,h,w,t,h,w... (IMROPE), as ggml */
static int pair_component(const rope_params *p, int64_t i) {
    const int32_t *s = p->sections;
    int64_t sect_dims = (int64_t)s[0] + s[1] + s[2] + s[3];
    if (sect_dims <= 0) return 0; /* the builder rejects this */
    int64_t sector = i % sect_dims;
    if (p->mode == ROPE_IMROPE) {
        if (sector % 3 == 1 && sector < 3 * s[1]) return 1;
        if (sector % 3 == 2 && sector < 3 * s[2]) return 2;
        if (sector % 3 == 0 && sector < 3 * s[0]) return 0;
        return 3;
    }
    return sector < s[0] ? 0 : sector < s[0] + s[1] ? 1 : sector < s[0] + s[1] + s[2] ? 2 : 3;
}

static float position(const rope_params *p, int comp, int64_t i2) {
    return (float)*(const int32_t *)(p->pos->data + (comp * p->n_tokens + i2) * p->pos->nb[0]);
}

/* cos and sin (times mscale) of every pair of token i2 */
static void build_cache(const rope_params *p, int64_t i2, float *cs, float *sn) {
    float chain[4] = {0};
    for (int c = 0; c < (p->multi ? 4 : 1); c++) chain[c] = position(p, c, i2);
    const float ramp_width = 0.001f > p->corr_hi - p->corr_lo ? 0.001f : p->corr_hi - p->corr_lo;
    for (int64_t i = 0; i < p->n_pairs; i++) {
        float theta = chain[p->multi ? pair_component(p, i) : 0];
        float extrap = p->ff ? theta / *(const float *)(p->ff->data + i * p->ff->nb[0]) : theta;
        theta = p->freq_scale * extrap;
        if (p->ext_factor != 0.0f) { /* YaRN: blend interpolation and extrapolation by a ramp over pairs */
            float y = ((float)i - p->corr_lo) / ramp_width;
            float ramp_mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * p->ext_factor;
            theta = theta * (1.0f - ramp_mix) + extrap * ramp_mix;
        }
        cs[i] = cosf(theta) * p->mscale;
        sn[i] = sinf(theta) * p->mscale;
        for (int c = 0; c < 4; c++) chain[c] *= p->theta_scale;
    }
}

/* rotate pairs (i*step0, i*step0 + off1): NORMAL (2i, 2i+1) is step0 2, off1 1; NEOX-ordered
 * modes (i, i + n_pairs) are step0 1, off1 n_pairs */
static void rotate(const float *x, float *y, const float *cs, const float *sn, int64_t n_pairs, int64_t step0,
                   int64_t off1) {
    for (int64_t i = 0; i < n_pairs; i++) {
        float x0 = x[i * step0], x1 = x[i * step0 + off1];
        y[i * step0] = x0 * cs[i] - x1 * sn[i];
        y[i * step0 + off1] = x0 * sn[i] + x1 * cs[i];
    }
}

static int64_t row_bytes(int64_t n) { return (n * 4 + 63) & ~(int64_t)63; }

/* per-thread scratch: cos, sin of one token, and one row for strided src/dst */
static int64_t slice_bytes(const gr_op *op) { return 2 * row_bytes(op->ip[0] / 2) + row_bytes(op->src[0].ne[0]); }

void gr_k_rope(const gr_op *op, const gr_thread *th) {
    const gr_tensor *a = &op->src[0], *d = &op->dst;
    const rope_params p = params_of(op);
    const int64_t ne0 = a->ne[0], n_dims = 2 * p.n_pairs;
    const bool normal = p.mode == ROPE_NORMAL;
    const bool a_cont = a->nb[0] == 4, d_cont = d->nb[0] == 4;
    char *w = op->wdata + th->ith * slice_bytes(op);
    float *cs = (float *)w, *sn = (float *)(w + row_bytes(p.n_pairs)), *buf = (float *)(w + 2 * row_bytes(p.n_pairs));
    int64_t r0, r1, i1, i2, i3, cached = -1;
    gr_chunk(gr_nrows(a), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        gr_unravel_row(a, r, &i1, &i2, &i3);
        if (i2 != cached) build_cache(&p, i2, cs, sn), cached = i2;
        const char *src = gr_row(a, i1, i2, i3);
        char *dst = gr_row(d, i1, i2, i3);
        const float *x = (const float *)src;
        if (!a_cont) {
            for (int64_t i = 0; i < ne0; i++) buf[i] = *(const float *)(src + i * a->nb[0]);
            x = buf;
        }
        float *y = d_cont ? (float *)dst : buf;
        rotate(x, y, cs, sn, p.n_pairs, normal ? 2 : 1, normal ? 1 : p.n_pairs);
        if (y != x) memmove(y + n_dims, x + n_dims, (size_t)(ne0 - n_dims) * sizeof(float));
        if (!d_cont)
            for (int64_t i = 0; i < ne0; i++) *(float *)(dst + i * d->nb[0]) = y[i];
    }
}

int64_t gr_w_rope(const gr_op *op, int nth) { return nth * slice_bytes(op); }
