// rope (NORMAL, NEOX, MROPE, IMROPE; YaRN): one invocation per row (head, token, i3) walks the
// pairs in order, building each angle by repeated float multiplication as ggml's cache loop.
// -DMODE=<ggml mode>, -DHAS_FF (freq_factors; binding ff is pos and unused without). The host
// passes theta_scale, the YaRN corr dims and mscale, computed in float32 exactly as the reference.
#version 450
#define N_TENSORS 4
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, pos, readonly);
TENSOR(3, ff, readonly);
TENSOR(4, d, );
layout(push_constant) uniform Push {
    int n_dims;
    int s0, s1, s2, s3;  // sections
    float theta_scale;
    float freq_scale;
    float ext_factor;
    float low;
    float high;
    float mscale;
} pc;

void main() {
    uint r = group_index() * WG + gl_LocalInvocationID.x;
    if (r >= NROWS(a)) return;
    uvec3 ri = row_index(r, NE(a));
    uint i1 = ri.x, i2 = ri.y, i3 = ri.z;
    uint n_pairs = uint(pc.n_dims) / 2u, n_tok = NE(a).z;
#if MODE == 8 || MODE == 40
    float t[4];
    [[unroll]] for (uint c = 0; c < 4u; c++) t[c] = float(int(U32(pos, AT(pos, c * n_tok + i2, 0u, 0u, 0u))));
    uint sect = uint(pc.s0 + pc.s1 + pc.s2 + pc.s3);
#else
    float t0 = float(int(U32(pos, AT(pos, i2, 0u, 0u, 0u))));
#endif
    for (uint i = 0; i < n_pairs; i++) {
#if MODE == 8 || MODE == 40
        uint sector = i % sect, c;
#if MODE == 40  // interleaved sections
        if (sector % 3u == 1u && sector < 3u * uint(pc.s1)) c = 1u;
        else if (sector % 3u == 2u && sector < 3u * uint(pc.s2)) c = 2u;
        else if (sector % 3u == 0u && sector < 3u * uint(pc.s0)) c = 0u;
        else c = 3u;
#else
        c = sector < uint(pc.s0) ? 0u : sector < uint(pc.s0 + pc.s1) ? 1u : sector < uint(pc.s0 + pc.s1 + pc.s2) ? 2u : 3u;
#endif
        float theta_extrap = t[c];
#else
        float theta_extrap = t0;
#endif
#ifdef HAS_FF
        theta_extrap = theta_extrap / LD_F32(ff, AT(ff, i, 0u, 0u, 0u));
#endif
        precise float theta = pc.freq_scale * theta_extrap;
        if (pc.ext_factor != 0.0) {
            float y = (float(i) - pc.low) / max(0.001, pc.high - pc.low);
            float ramp_mix = (1.0 - min(1.0, max(0.0, y))) * pc.ext_factor;
            precise float mixed = theta * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            theta = mixed;
        }
        float cs = cos(theta) * pc.mscale, sn = sin(theta) * pc.mscale;
#if MODE == 0
        uint j0 = 2u * i, j1 = 2u * i + 1u;
#else
        uint j0 = i, j1 = i + n_pairs;
#endif
        float x0 = LD_F32(a, AT(a, j0, i1, i2, i3)), x1 = LD_F32(a, AT(a, j1, i1, i2, i3));
        ST_F32(d, AT(d, j0, i1, i2, i3), x0 * cs - x1 * sn);
        ST_F32(d, AT(d, j1, i1, i2, i3), x0 * sn + x1 * cs);
#if MODE == 8 || MODE == 40
        [[unroll]] for (uint c2 = 0; c2 < 4u; c2++) t[c2] *= pc.theta_scale;
#else
        t0 *= pc.theta_scale;
#endif
    }
    for (uint i0 = uint(pc.n_dims); i0 < NE(a).x; i0++) ST_F32(d, AT(d, i0, i1, i2, i3), LD_F32(a, AT(a, i0, i1, i2, i3)));
}
