// flash_attn_ext: d[:, h, iq, s] = softmax(scale q k^T (softcapped) + slope mask) v for one query
// row per work-group of WG invocations, kv head h / (H / H_kv) (grouped). Pass 1 finds the row
// max; pass 2 walks the kv cells in chunks of WG: each invocation scores one cell into shared
// memory, then accumulates its DV_PER output channels over the chunk. -inf mask entries weigh
// exactly 0 and their K and V are never read (a decode's padded cache is mostly free cells); a fully
// masked row gives zeros (ggml's S == 0 rule). -DTK, -DTV (F32|F16),
// -DHAS_MASK with -DTM (binding m is q and unused without a mask), -DSOFTCAP (the host passes
// scale / softcap); the ALiBi slopes per head are the meta buffer's extra floats.
#version 450
#define N_TENSORS 5
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, q, readonly);
TENSOR(2, k, readonly);
TENSOR(3, v, readonly);
TENSOR(4, m, readonly);
TENSOR(5, d, );
layout(push_constant) uniform Push {
    float scale;
    float softcap;
} pc;

shared float w_[WG];

float score(uint j, uint iq, uint h, uint s, uint hk, uint sk, float slope) {
#ifdef HAS_MASK
    // a -inf mask entry: the cell weighs exactly 0, its K (and V) never read (free cells of a padded cache)
    float mv = slope * LD(TM, m, AT(m, j, iq, h % NE(m).z, s % NE(m).w));
    if (isinf(mv) && mv < 0.0) return mv;
#endif
    uint qr = AT(q, 0u, iq, h, s), kr = AT(k, 0u, j, hk, sk);
    float dot = 0.0;
    for (uint i = 0; i < NE(q).x; i++) dot += LD_F32(q, qr + i * NB(q).x) * LD(TK, k, kr + i * NB(k).x);
    float x = dot * pc.scale;
#ifdef SOFTCAP
    x = pc.softcap * tanh(clamp(x, -15.0, 15.0));
#endif
#ifdef HAS_MASK
    x += mv;
#endif
    return x;
}

void main() {
    uint grp = group_index(), l = gl_LocalInvocationID.x;
    uint n_q = NE(q).y, H = NE(q).z, n_kv = NE(k).y, Dv = NE(v).x;
    if (grp >= n_q * H * NE(q).w) return;
    uint iq = grp % n_q, h = (grp / n_q) % H, s = grp / (n_q * H);
    uint hk = h / (H / NE(k).z), sk = s / (NE(q).w / NE(k).w);
    float slope = extra[h];
    const float NEG_INF = uintBitsToFloat(0xFF800000u);

    float mx = NEG_INF;
    for (uint j = l; j < n_kv; j += WG) mx = max(mx, score(j, iq, h, s, hk, sk, slope));
    mx = wg_max(mx);
    float off = mx == NEG_INF ? 0.0 : mx;

    float acc[DV_PER];
    [[unroll]] for (uint t = 0; t < DV_PER; t++) acc[t] = 0.0;
    float total = 0.0;
    for (uint c0 = 0; c0 < n_kv; c0 += WG) {
        uint j = c0 + l;
        float e = j < n_kv ? exp(score(j, iq, h, s, hk, sk, slope) - off) : 0.0;
        w_[l] = e;
        total += e;
        memoryBarrierShared();
        barrier();
        uint n = min(WG, n_kv - c0);
        [[unroll]] for (uint t = 0; t < DV_PER; t++) {
            uint dv = l + t * WG;
            if (dv < Dv) {
                uint vc = AT(v, dv, c0, hk, sk);
                for (uint jj = 0; jj < n; jj++)
                    if (w_[jj] != 0.0) acc[t] += w_[jj] * LD(TV, v, vc + jj * NB(v).y);  // (uniform branch)
            }
        }
        barrier();
    }
    float sum = wg_sum(total);
    [[unroll]] for (uint t = 0; t < DV_PER; t++) {
        uint dv = l + t * WG;
        if (dv < Dv) ST_F32(d, AT(d, dv, h, iq, s), sum == 0.0 ? 0.0 : acc[t] / sum);
    }
}
