// rope (NORMAL, NEOX, MROPE, IMROPE; YaRN): one work-item per row (head, token, i3) walks the
// pairs in order, building each angle by repeated float multiplication as ggml's cache loop.
// -DMODE=<ggml mode>, -DHAS_FF (freq_factors). The host passes theta_scale, the YaRN corr dims
// and mscale, computed in float32 exactly as the cpu reference.
#include "common.h"

__kernel void rope(TENSOR(a), TENSOR(pos), TENSOR(ff), TENSOR(d), int n_dims, int4 sections,
                   float theta_scale, float freq_scale, float ext_factor, float low, float high, float mscale) {
    int r = get_global_id(0);
    if (r >= a_ne.s1 * a_ne.s2 * a_ne.s3) return;
    int i1 = r % a_ne.s1, i2 = (r / a_ne.s1) % a_ne.s2, i3 = r / (a_ne.s1 * a_ne.s2);
    int n_pairs = n_dims / 2, n_tok = a_ne.s2;
#if MODE == 8 || MODE == 40
    float t[4];
    for (int c = 0; c < 4; c++) t[c] = (float)*(__global const int *)AT(pos, c * n_tok + i2, 0, 0, 0);
    int sect = sections.s0 + sections.s1 + sections.s2 + sections.s3;
#else
    float t0 = (float)*(__global const int *)AT(pos, i2, 0, 0, 0);
#endif
    for (int i = 0; i < n_pairs; i++) {
#if MODE == 8 || MODE == 40
        int sector = i % sect, c;
#if MODE == 40  // interleaved sections
        if (sector % 3 == 1 && sector < 3 * sections.s1) c = 1;
        else if (sector % 3 == 2 && sector < 3 * sections.s2) c = 2;
        else if (sector % 3 == 0 && sector < 3 * sections.s0) c = 0;
        else c = 3;
#else
        c = sector < sections.s0 ? 0 : sector < sections.s0 + sections.s1 ? 1
          : sector < sections.s0 + sections.s1 + sections.s2 ? 2 : 3;
#endif
        float theta_extrap = t[c];
#else
        float theta_extrap = t0;
#endif
#ifdef HAS_FF
        theta_extrap = theta_extrap / LD_F32(AT(ff, i, 0, 0, 0));
#endif
        float theta = freq_scale * theta_extrap;
        if (ext_factor != 0.0f) {
            float y = ((float)i - low) / fmax(0.001f, high - low);
            float ramp_mix = (1.0f - fmin(1.0f, fmax(0.0f, y))) * ext_factor;
            theta = theta * (1.0f - ramp_mix) + theta_extrap * ramp_mix;
        }
        float cs = cos(theta) * mscale, sn = sin(theta) * mscale;
#if MODE == 0
        int j0 = 2 * i, j1 = 2 * i + 1;
#else
        int j0 = i, j1 = i + n_pairs;
#endif
        float x0 = LD_F32(AT(a, j0, i1, i2, i3)), x1 = LD_F32(AT(a, j1, i1, i2, i3));
        ST_F32(AT(d, j0, i1, i2, i3), x0 * cs - x1 * sn);
        ST_F32(AT(d, j1, i1, i2, i3), x0 * sn + x1 * cs);
#if MODE == 8 || MODE == 40
        for (int c2 = 0; c2 < 4; c2++) t[c2] *= theta_scale;
#else
        t0 *= theta_scale;
#endif
    }
    for (int i0 = n_dims; i0 < a_ne.s0; i0++) ST_F32(AT(d, i0, i1, i2, i3), LD_F32(AT(a, i0, i1, i2, i3)));
}
