// flash_attn_ext: d[:, h, iq, s] = softmax(scale q k^T (softcapped) + slope mask) v, with F32 q and
// F32/F16 K/V, GQA (q head h reads kv head h / (H / H_kv)), an optional F32/F16 mask broadcast over
// dims 2, 3. One block of FA_WARPS warps per query row (decode and prefill alike): warp w walks the
// kv cells w, w + FA_WARPS, ... with an online softmax, lane l holding head channels l, l + 32, ...;
// the warps' partial results merge through shared memory. -inf mask entries weigh exactly 0; a
// fully masked row gives zeros (ggml's S == 0 rule).
#include "common.cuh"

#define FA_WARPS 4  // kernels.py FA_WARPS
#define FA_R 8      // head channels per lane: D, Dv <= 32 * FA_R (kernels.py FA_MAX_D)

extern "C" __global__ void __launch_bounds__(FA_WARPS * WARP)
flash_attn_ext(const Tensor q, const Tensor k, const Tensor v, const Tensor m, const float *slopes, Tensor d,
               float scale, float softcap) {
    __shared__ float s_acc[FA_WARPS][FA_R * WARP];
    __shared__ float s_ml[FA_WARPS][2];
    int n_q = q.ne[1], H = q.ne[2], n_kv = k.ne[1], D = q.ne[0], Dv = v.ne[0];
    int iq = blockIdx.x % n_q, h = (blockIdx.x / n_q) % H, s = blockIdx.x / (n_q * H);
    int hk = h / (H / k.ne[2]), sk = s / (q.ne[3] / k.ne[3]);
    int w = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    float slope = slopes[h];
    const char *qr = at(q, 0, iq, h, s);
    float qv[FA_R], acc[FA_R];
#pragma unroll
    for (int r = 0; r < FA_R; r++) {
        int i = lane + WARP * r;
        qv[r] = i < D ? ldf(qr + i * q.nb[0]) : 0.0f;
        acc[r] = 0.0f;
    }
    float mx = -INFINITY, l = 0.0f;
    for (int j = w; j < n_kv; j += FA_WARPS) {
        float mv = 0.0f;
        if (m.data) {
            mv = ld(m.type, at(m, j, iq, h % m.ne[2], s % m.ne[3]));
            if (mv == -INFINITY) continue;  // warp-uniform: every lane reads the same cell
            mv *= slope;
        }
        const char *kr = at(k, 0, j, hk, sk);
        float dot = 0.0f;
#pragma unroll
        for (int r = 0; r < FA_R; r++) {
            int i = lane + WARP * r;
            if (i < D) dot = fmaf(qv[r], ld(k.type, kr + i * k.nb[0]), dot);
        }
        float x = warp_sum(dot) * scale;
        if (softcap != 0.0f) x = softcap * tanhf(x);
        x += mv;
        float mnew = fmaxf(mx, x), corr = expf(mx - mnew), p = expf(x - mnew);
        l = l * corr + p;
        const char *vr = at(v, 0, j, hk, sk);
#pragma unroll
        for (int r = 0; r < FA_R; r++) {
            int i = lane + WARP * r;
            acc[r] = acc[r] * corr + (i < Dv ? p * ld(v.type, vr + i * v.nb[0]) : 0.0f);
        }
        mx = mnew;
    }
#pragma unroll
    for (int r = 0; r < FA_R; r++) s_acc[w][lane + WARP * r] = acc[r];
    if (lane == 0) {
        s_ml[w][0] = mx;
        s_ml[w][1] = l;
    }
    __syncthreads();
    float M = -INFINITY;
    for (int i = 0; i < FA_WARPS; i++) M = fmaxf(M, s_ml[i][0]);
    float L = 0.0f, f[FA_WARPS];
#pragma unroll
    for (int i = 0; i < FA_WARPS; i++) {
        f[i] = s_ml[i][1] == 0.0f ? 0.0f : expf(s_ml[i][0] - M);
        L += s_ml[i][1] * f[i];
    }
    for (int c = threadIdx.x; c < Dv; c += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int i = 0; i < FA_WARPS; i++) o += s_acc[i][c] * f[i];
        stf(at(d, c, h, iq, s), L == 0.0f ? 0.0f : o / L);
    }
}
