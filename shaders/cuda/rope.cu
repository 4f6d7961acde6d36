// rope (NORMAL, NEOX, MROPE, IMROPE; YaRN): one thread per row (head, token, i3) walks the pairs in
// order, building each angle by repeated float multiplication as ggml's cache loop. The host passes
// theta_scale, the YaRN corr dims and mscale, computed in float32 exactly as the cpu reference.
// ff.data == 0: no freq_factors.
#include "common.cuh"

extern "C" __global__ void rope(const Tensor a, const Tensor pos, const Tensor ff, Tensor d, int mode, int n_dims,
                                int sec0, int sec1, int sec2, int sec3, float theta_scale, float freq_scale,
                                float ext_factor, float low, float high, float mscale) {
    long long r = global_id();
    if (r >= (long long)a.ne[1] * a.ne[2] * a.ne[3]) return;
    int i1 = (int)(r % a.ne[1]), i2 = (int)((r / a.ne[1]) % a.ne[2]), i3 = (int)(r / ((long long)a.ne[1] * a.ne[2]));
    int n_pairs = n_dims / 2, n_tok = a.ne[2];
    bool multi = mode == 8 || mode == 40;
    // the position of each section (all equal outside the multi-section modes); scalars, not an
    // array, so they stay in registers
    float t0 = (float)*(const int *)at(pos, i2, 0, 0, 0), t1 = t0, t2 = t0, t3 = t0;
    if (multi) {
        t1 = (float)*(const int *)at(pos, n_tok + i2, 0, 0, 0);
        t2 = (float)*(const int *)at(pos, 2 * n_tok + i2, 0, 0, 0);
        t3 = (float)*(const int *)at(pos, 3 * n_tok + i2, 0, 0, 0);
    }
    int sect = sec0 + sec1 + sec2 + sec3;
    for (int i = 0; i < n_pairs; i++) {
        int c = 0;
        if (multi) {
            int sector = i % sect;
            if (mode == 40) {  // interleaved sections
                if (sector % 3 == 1 && sector < 3 * sec1) c = 1;
                else if (sector % 3 == 2 && sector < 3 * sec2) c = 2;
                else if (sector % 3 == 0 && sector < 3 * sec0) c = 0;
                else c = 3;
            } else {
                c = sector < sec0 ? 0 : sector < sec0 + sec1 ? 1 : sector < sec0 + sec1 + sec2 ? 2 : 3;
            }
        }
        float theta_extrap = c == 0 ? t0 : c == 1 ? t1 : c == 2 ? t2 : t3;
        if (ff.data) theta_extrap = theta_extrap / ldf(at(ff, i, 0, 0, 0));
        float theta = freq_scale * theta_extrap;
        if (ext_factor != 0.0f) {
            float y = ((float)i - low) / fmaxf(0.001f, high - low);
            float ramp_mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext_factor;
            theta = theta * (1.0f - ramp_mix) + theta_extrap * ramp_mix;
        }
        float cs = cosf(theta) * mscale, sn = sinf(theta) * mscale;
        int j0 = mode == 0 ? 2 * i : i, j1 = mode == 0 ? 2 * i + 1 : i + n_pairs;
        float x0 = ldf(at(a, j0, i1, i2, i3)), x1 = ldf(at(a, j1, i1, i2, i3));
        stf(at(d, j0, i1, i2, i3), x0 * cs - x1 * sn);
        stf(at(d, j1, i1, i2, i3), x0 * sn + x1 * cs);
        t0 *= theta_scale;
        t1 *= theta_scale;
        t2 *= theta_scale;
        t3 *= theta_scale;
    }
    for (int i0 = n_dims; i0 < a.ne[0]; i0++) stf(at(d, i0, i1, i2, i3), ldf(at(a, i0, i1, i2, i3)));
}
